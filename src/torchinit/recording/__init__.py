"""The record of what construction does to meta tensors (``deferred()``), and its replay: storages and ATen ops
(``aten``), the log and its replay (``log``), the dispatch mode (``mode``), per-thread recordings and whole-call
recording of init functions (``threads``, ``inits``), and which recording owns a meta tensor (``owners``)."""
