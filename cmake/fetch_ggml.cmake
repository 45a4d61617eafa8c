# Script-mode entry: cmake [-DDGEMMA_GGML_SDIST=...] [-DDGEMMA_GGML_CACHE_DIR=...] -P cmake/fetch_ggml.cmake
# Fetches and verifies the pinned ggml source and prints its path on the last line. Used by the tests and
# by anyone preparing an offline machine (copy the cache directory across).
include("${CMAKE_CURRENT_LIST_DIR}/FetchGGML.cmake")
dgemma_fetch_ggml(dir)
message("DGEMMA_GGML_DIR=${dir}")
