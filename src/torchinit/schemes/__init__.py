"""The initialization schemes: fans and layouts (``layout``), gains (``gains``), the in-place functions (``basic``,
``variance``, ``truncnorm``, ``structured``, ``glass``) declared through one contract (``contract``), their object
form (``initializers``) and torch's deprecated aliases (``deprecated``). Each function works on one tensor."""
