# cuda.cmake — the CUDA backend's build (included by native/CMakeLists.txt after llmt_engine is defined).
# No CUDA language support and no CUDA library at link time: nvcc compiles kernels.cu into a fatbin (one SASS per
# LLMT_CUDA_ARCHS entry + PTX of the last), embedded in llmt_engine and loaded through the dlopen'ed driver at run
# time (cuda/loader.cpp). So the result links and runs anywhere; without a GPU it falls back to the CPU.
set(LLMT_CUDA_ENABLED OFF)
if(NOT LLMT_CUDA STREQUAL "OFF")
  set(_nvcc "${LLMT_NVCC}")
  if(NOT _nvcc)
    set(_hints)
    foreach(v CUDACXX CUDA_HOME CUDA_PATH)
      if(DEFINED ENV{${v}})
        if(v STREQUAL "CUDACXX")
          get_filename_component(_d "$ENV{CUDACXX}" DIRECTORY)
          list(APPEND _hints "${_d}")
        else()
          list(APPEND _hints "$ENV{${v}}/bin")
        endif()
      endif()
    endforeach()
    find_program(LLMT_NVCC_FOUND nvcc HINTS ${_hints} PATHS /usr/local/cuda/bin)
    if(LLMT_NVCC_FOUND)
      set(_nvcc "${LLMT_NVCC_FOUND}")
    endif()
  endif()
  if(_nvcc AND EXISTS "${_nvcc}")
    set(LLMT_CUDA_ENABLED ON)
  elseif(LLMT_CUDA STREQUAL "ON" OR LLMT_CUDA STREQUAL "1" OR LLMT_CUDA STREQUAL "TRUE")
    message(FATAL_ERROR "llmt: LLMT_CUDA=ON but nvcc was not found; set LLMT_NVCC=/path/to/nvcc (or pip install nvidia-cuda-nvcc, see .ci/cuda-toolchain.txt)")
  endif()
endif()

if(LLMT_CUDA_ENABLED)
  set(_gencode)
  set(_names)
  set(_last)
  foreach(a ${LLMT_CUDA_ARCHS})
    list(APPEND _gencode "-gencode=arch=compute_${a},code=sm_${a}")
    list(APPEND _names "sm_${a}")
    set(_last ${a})
  endforeach()
  list(APPEND _gencode "-gencode=arch=compute_${_last},code=compute_${_last}")
  list(APPEND _names "compute_${_last}")
  string(REPLACE ";" "," _archs "${_names}")
  set(_fatbin ${CMAKE_CURRENT_BINARY_DIR}/llmt_kernels.fatbin)
  add_custom_command(OUTPUT ${_fatbin}
    COMMAND "${_nvcc}" -fatbin -O3 -std=c++17 -ccbin "${CMAKE_CXX_COMPILER}" ${_gencode}
            -o ${_fatbin} ${CMAKE_CURRENT_SOURCE_DIR}/cuda/kernels.cu
    DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/cuda/kernels.cu
    COMMENT "nvcc: CUDA kernels for ${_archs}"
    VERBATIM)
  add_custom_target(llmt_cuda_fatbin DEPENDS ${_fatbin})
  set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/cuda/embed_fatbin.c PROPERTIES
    OBJECT_DEPENDS ${_fatbin} COMPILE_DEFINITIONS "LLMT_FATBIN_PATH=${_fatbin}")
  target_sources(llmt_engine PRIVATE cuda/backend_cuda.cpp cuda/embed_fatbin.c)
  add_dependencies(llmt_engine llmt_cuda_fatbin)
  set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/cuda/select.cpp PROPERTIES
    COMPILE_DEFINITIONS "LLMT_CUDA_ARCHS=\"${_archs}\"")
  message(STATUS "llmt: CUDA backend ON (${_nvcc}; ${_archs}); it runs where a driver is present, else falls back to CPU")
else()
  target_sources(llmt_engine PRIVATE cuda/nocuda.cpp)
  message(STATUS "llmt: CUDA backend OFF (nvcc not found or LLMT_CUDA=OFF): CPU-only build")
endif()
