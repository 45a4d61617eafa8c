# The one place that names the ggml we build against (see ../shared/GGML.md §1).
# ggml is taken from the source distribution of llama-cpp-python on the package index the user's pip is
# configured for; only its vendor/llama.cpp/ggml subtree is extracted. Changing the pin means changing all
# four values together.
set(DGEMMA_GGML_DIST_NAME    "llama-cpp-python")
set(DGEMMA_GGML_DIST_VERSION "0.3.36")
set(DGEMMA_GGML_DIST_FILE    "llama_cpp_python-0.3.36.tar.gz")
set(DGEMMA_GGML_DIST_SHA256  "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")
set(DGEMMA_GGML_SUBTREE      "llama_cpp_python-0.3.36/vendor/llama.cpp/ggml")
