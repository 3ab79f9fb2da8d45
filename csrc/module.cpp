// Python module for dtifast._C: importing it runs the TORCH_LIBRARY registrations of every csrc file.
#include <Python.h>

static struct PyModuleDef dtifast_module = {PyModuleDef_HEAD_INIT, "_C", "dtifast native kernels", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&dtifast_module); }
