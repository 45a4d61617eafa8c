# Our build-time edits of the pinned ggml tree, applied once to the verified tree in the per-user cache
# (never to a tree given with DGEMMA_GGML_SOURCE_DIR, which is the user's). Each edit is found by an exact
# anchor in the pinned file and marked, so applying twice changes nothing; an anchor that is missing means
# the pin changed without this file being revisited, and the configure stops.
#
#   dgemma_patch_ggml(<ggml dir>)
#
# 1. ggml-cuda MoE tile width (src/ggml-cuda/mmq.cu). MUL_MAT_ID on quantized experts picks the MMQ tile
#    width J from the whole batch (256 canvas tokens -> J = 128), but each expert sees only
#    tokens * top_k / n_experts of them (256 * 8 / 128 = 16 at the released shape): 7/8 of every expert
#    tile's tensor-core work is padding. ggml already sizes the tile by the per-expert average on RDNA3/4;
#    the edit does the same on NVIDIA. DGEMMA_MMQ_MOE_NCOLS=N (N > 0) sizes it for N columns instead, and
#    0 restores ggml's choice (for A/B timing: benchmarks/gpu_check.sh).

# Bumped whenever an edit is added or changed: the cached tree's directory name carries it
# (FetchGGML.cmake), so a tree edited by another version of this file is never taken for this one's.
set(DGEMMA_GGML_EDITS_VERSION "e1")

function(_dgemma_patch_file file anchor mark edit)
  if(anchor STREQUAL "" OR mark STREQUAL "")
    message(FATAL_ERROR "error: cannot apply a ggml edit to ${file}: its anchor or mark is empty")
  endif()
  file(READ "${file}" text)
  string(FIND "${text}" "${mark}" done)
  if(NOT done EQUAL -1)
    return()
  endif()
  string(FIND "${text}" "${anchor}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "error: cannot apply the ggml edit '${mark}': ${file} lacks its anchor\n"
      "  If the ggml pin (cmake/ggml_pin.cmake) changed, update the edit's anchor in cmake/PatchGGML.cmake "
      "for the new source; if the cached tree was edited by hand, delete it and build again.")
  endif()
  string(LENGTH "${anchor}" n)
  math(EXPR cut "${at} + ${n}")
  string(SUBSTRING "${text}" 0 ${cut} head)
  string(SUBSTRING "${text}" ${cut} -1 tail)
  # written beside under a name of its own and renamed: an interrupted or concurrent configure never leaves
  # half a file
  string(RANDOM LENGTH 8 tag)
  file(WRITE "${file}.dgemma-${tag}" "${head}${edit}${tail}")
  file(RENAME "${file}.dgemma-${tag}" "${file}")
  message(STATUS "dgemma: applied the ggml edit '${mark}' to ${file}")
endfunction()

function(dgemma_patch_ggml ggml_dir)
  # the edit's text lives here, not at file scope, so it is defined wherever this file was included
  set(anchor "        ncols_opt = (ne12*n_expert_used + ne02 - 1) / ne02;\n    }\n")
  set(edit [=[
    if (GGML_CUDA_CC_IS_NVIDIA(cc)) { // dgemma-patch: moe-ncols (pygguf_diffusion cmake/PatchGGML.cmake)
        static const long dgemma_ncols = [] {   // unset or not a number: the per-expert average
            const char * v = getenv("DGEMMA_MMQ_MOE_NCOLS");
            char * end = nullptr;
            const long n = v ? strtol(v, &end, 10) : -1L;
            return v && end != v && *end == '\0' ? n : -1L;
        }();
        ncols_opt = dgemma_ncols == 0 ? ne12 : dgemma_ncols > 0 ? (int64_t) dgemma_ncols
                  : (ne12*n_expert_used + ne02 - 1) / ne02;
    }
]=])
  _dgemma_patch_file("${ggml_dir}/src/ggml-cuda/mmq.cu" "${anchor}" "dgemma-patch: moe-ncols" "${edit}")
endfunction()
