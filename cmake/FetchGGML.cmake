# Obtain the pinned ggml source tree, verified by sha256, cached per user.
#
#   dgemma_fetch_ggml(<out_var>)  -> sets <out_var> to a directory holding ggml's CMakeLists.txt
#
# Inputs (cache variables or -D on the command line):
#   DGEMMA_GGML_SDIST      a local copy of the pinned .tar.gz (offline machines); its hash is still checked
#   DGEMMA_GGML_CACHE_DIR  where downloads and the extracted tree live
#                          (default: $DGEMMA_CACHE_DIR, else $XDG_CACHE_HOME/pygguf_diffusion, else ~/.cache/...)
#   Python_EXECUTABLE      the interpreter whose pip downloads the distribution
#
# Works in script mode too (cmake -P cmake/fetch_ggml.cmake), which the build test uses.
include("${CMAKE_CURRENT_LIST_DIR}/ggml_pin.cmake")
include("${CMAKE_CURRENT_LIST_DIR}/PatchGGML.cmake")

function(_dgemma_fail what detail hint)
  message(FATAL_ERROR "error: ${what}: ${detail}\n  ${hint}")
endfunction()

function(_dgemma_default_cache_dir out)
  if(DEFINED ENV{DGEMMA_CACHE_DIR} AND NOT "$ENV{DGEMMA_CACHE_DIR}" STREQUAL "")
    set(dir "$ENV{DGEMMA_CACHE_DIR}")
  elseif(DEFINED ENV{XDG_CACHE_HOME} AND NOT "$ENV{XDG_CACHE_HOME}" STREQUAL "")
    set(dir "$ENV{XDG_CACHE_HOME}/pygguf_diffusion")
  elseif(DEFINED ENV{HOME})
    set(dir "$ENV{HOME}/.cache/pygguf_diffusion")
  elseif(DEFINED ENV{LOCALAPPDATA})
    set(dir "$ENV{LOCALAPPDATA}/pygguf_diffusion/cache")
  else()
    set(dir "${CMAKE_BINARY_DIR}/dgemma-cache")
  endif()
  set(${out} "${dir}" PARENT_SCOPE)
endfunction()

# Checks <file> against the pinned hash; on mismatch deletes nothing the user owns and fails.
function(_dgemma_check_hash file origin hint)
  file(SHA256 "${file}" actual)
  if(NOT actual STREQUAL DGEMMA_GGML_DIST_SHA256)
    _dgemma_fail("ggml source archive failed verification"
      "${file} (${origin}) has sha256 ${actual}, expected ${DGEMMA_GGML_DIST_SHA256}" "${hint}")
  endif()
endfunction()

function(_dgemma_download_sdist dest_dir out_file)
  if(NOT Python_EXECUTABLE)
    find_program(Python_EXECUTABLE NAMES python3 python)
  endif()
  if(NOT Python_EXECUTABLE)
    _dgemma_fail("cannot download ggml" "no Python interpreter found to run pip"
      "Pass -DPython_EXECUTABLE=<python with pip>, -DDGEMMA_GGML_SDIST=<archive> or -DDGEMMA_GGML_SOURCE_DIR=<ggml tree>.")
  endif()
  file(MAKE_DIRECTORY "${dest_dir}")
  set(req "${dest_dir}/requirements.txt")
  file(WRITE "${req}" "${DGEMMA_GGML_DIST_NAME}==${DGEMMA_GGML_DIST_VERSION} --hash=sha256:${DGEMMA_GGML_DIST_SHA256}\n")
  # pip prepares metadata for a source distribution. Without build isolation it uses the scikit-build-core
  # already present (our own build backend) instead of building llama-cpp-python's build requirements,
  # which `--no-binary :all:` would compile from source (cmake included). --require-hashes makes pip refuse
  # a wrong archive before saving it.
  set(base_args -m pip download --no-deps --no-binary ${DGEMMA_GGML_DIST_NAME} --require-hashes
      -r "${req}" -d "${dest_dir}" --disable-pip-version-check)
  message(STATUS "dgemma: downloading ${DGEMMA_GGML_DIST_NAME}==${DGEMMA_GGML_DIST_VERSION} (ggml source, ~77 MB) with pip")
  execute_process(COMMAND "${Python_EXECUTABLE}" ${base_args} --no-build-isolation
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(STATUS "dgemma: retrying the download with pip's build isolation")
    execute_process(COMMAND "${Python_EXECUTABLE}" ${base_args}
      RESULT_VARIABLE rc OUTPUT_VARIABLE out2 ERROR_VARIABLE err2)
    set(err "${err}\n${err2}")
  endif()
  set(file "${dest_dir}/${DGEMMA_GGML_DIST_FILE}")
  if(NOT rc EQUAL 0 OR NOT EXISTS "${file}")
    string(LENGTH "${err}" n)
    if(n GREATER 3000)
      math(EXPR start "${n} - 3000")
      string(SUBSTRING "${err}" ${start} 3000 err)
    endif()
    _dgemma_fail("cannot download ggml"
      "pip download of ${DGEMMA_GGML_DIST_NAME}==${DGEMMA_GGML_DIST_VERSION} failed (exit ${rc}):\n${err}"
      "Check that pip can reach your package index, or download ${DGEMMA_GGML_DIST_FILE} elsewhere and pass -DDGEMMA_GGML_SDIST=<path>, or pass -DDGEMMA_GGML_SOURCE_DIR=<ggml tree> / -DDGEMMA_USE_SYSTEM_GGML=ON.")
  endif()
  set(${out_file} "${file}" PARENT_SCOPE)
endfunction()

function(dgemma_fetch_ggml out_var)
  if(DGEMMA_GGML_CACHE_DIR)
    set(cache "${DGEMMA_GGML_CACHE_DIR}")
  else()
    _dgemma_default_cache_dir(cache)
  endif()
  string(SUBSTRING "${DGEMMA_GGML_DIST_SHA256}" 0 12 short)
  # the name carries the version of our edits (PatchGGML.cmake): the cached tree is edited in place
  set(tree "${cache}/ggml-${DGEMMA_GGML_DIST_VERSION}-${short}-${DGEMMA_GGML_EDITS_VERSION}")
  set(stamp "${tree}/.dgemma-verified")

  # A user-supplied archive is always verified, even when a verified tree is already cached.
  if(DGEMMA_GGML_SDIST)
    if(NOT EXISTS "${DGEMMA_GGML_SDIST}")
      _dgemma_fail("ggml source archive not found" "DGEMMA_GGML_SDIST=${DGEMMA_GGML_SDIST} does not exist"
        "Pass the path of ${DGEMMA_GGML_DIST_FILE}, or drop the option to let pip download it.")
    endif()
    _dgemma_check_hash("${DGEMMA_GGML_SDIST}" "DGEMMA_GGML_SDIST"
      "Pass the genuine ${DGEMMA_GGML_DIST_FILE} (${DGEMMA_GGML_DIST_NAME} ${DGEMMA_GGML_DIST_VERSION} from PyPI), or drop the option to let pip download it.")
  endif()

  if(EXISTS "${stamp}" AND EXISTS "${tree}/ggml/CMakeLists.txt")
    file(READ "${stamp}" stamped)
    string(STRIP "${stamped}" stamped)
    if(stamped STREQUAL DGEMMA_GGML_DIST_SHA256)
      message(STATUS "dgemma: using cached ggml source ${tree}/ggml")
      dgemma_patch_ggml("${tree}/ggml")
      set(${out_var} "${tree}/ggml" PARENT_SCOPE)
      return()
    endif()
  endif()

  if(DGEMMA_GGML_SDIST)
    set(archive "${DGEMMA_GGML_SDIST}")
  else()
    set(archive "${cache}/downloads/${DGEMMA_GGML_DIST_FILE}")
    if(EXISTS "${archive}")
      file(SHA256 "${archive}" cached_hash)
      if(NOT cached_hash STREQUAL DGEMMA_GGML_DIST_SHA256)
        message(STATUS "dgemma: cached archive ${archive} has the wrong hash; downloading again")
        file(REMOVE "${archive}")
      endif()
    endif()
    if(NOT EXISTS "${archive}")
      _dgemma_download_sdist("${cache}/downloads" archive)
    endif()
    _dgemma_check_hash("${archive}" "downloaded by pip"
      "Your package index served a different file; check its configuration, or pass -DDGEMMA_GGML_SDIST=<genuine archive>.")
  endif()

  # Extract into a private directory, then move into place: an interrupted extraction never leaves a tree
  # that a later build would take as complete (the stamp is written last).
  string(RANDOM LENGTH 8 tag)
  set(tmp "${cache}/.extract-${tag}")
  file(REMOVE_RECURSE "${tmp}")
  file(MAKE_DIRECTORY "${tmp}")
  message(STATUS "dgemma: extracting ${DGEMMA_GGML_SUBTREE}")
  file(ARCHIVE_EXTRACT INPUT "${archive}" DESTINATION "${tmp}" PATTERNS "${DGEMMA_GGML_SUBTREE}/*")
  if(NOT EXISTS "${tmp}/${DGEMMA_GGML_SUBTREE}/CMakeLists.txt")
    file(REMOVE_RECURSE "${tmp}")
    _dgemma_fail("ggml source archive is incomplete" "${archive} has no ${DGEMMA_GGML_SUBTREE}/CMakeLists.txt"
      "Delete ${archive} and build again.")
  endif()
  dgemma_patch_ggml("${tmp}/${DGEMMA_GGML_SUBTREE}")   # a tree is in place only with our edits
  file(REMOVE_RECURSE "${tree}")
  file(MAKE_DIRECTORY "${tree}")
  file(RENAME "${tmp}/${DGEMMA_GGML_SUBTREE}" "${tree}/ggml")
  file(REMOVE_RECURSE "${tmp}")
  file(WRITE "${stamp}" "${DGEMMA_GGML_DIST_SHA256}\n")
  message(STATUS "dgemma: ggml source ready at ${tree}/ggml")
  set(${out_var} "${tree}/ggml" PARENT_SCOPE)
endfunction()
