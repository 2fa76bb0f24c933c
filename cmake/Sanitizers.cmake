# Sanitizer and fuzzing builds (docs/testing.md), off by default.
#
#  NVFP4_SANITIZE  comma-separated -fsanitize= list applied to every C++ target of the build,
#                  e.g. "address,undefined" (build-asan) or "thread" (build-tsan). GCC or clang.
#  NVFP4_FUZZ      builds the libFuzzer targets of tests/fuzz and their CTest smoke runs (label
#                  "fuzz"). Clang only; implies NVFP4_SANITIZE=address,undefined unless set, and
#                  instruments every library with -fsanitize=fuzzer-no-link (coverage feedback).
#
# Flags apply to our code only: Debian's abseil, protobuf, gRPC and libstdc++ stay uninstrumented
# (ASan/UBSan handle that; see docs/testing.md for what it means for TSan).
set(NVFP4_SANITIZE "" CACHE STRING "Sanitizers for every target, e.g. address,undefined or thread")
option(NVFP4_FUZZ "Build the libFuzzer targets in tests/fuzz (clang)" OFF)

if(NVFP4_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "NVFP4_FUZZ=ON needs clang (libFuzzer): configure with CXX=clang++")
  endif()
  if(NVFP4_SANITIZE STREQUAL "")
    set(NVFP4_SANITIZE "address,undefined" CACHE STRING
        "Sanitizers for every target, e.g. address,undefined or thread" FORCE)
  endif()
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=fuzzer-no-link>)
endif()

if(NOT NVFP4_SANITIZE STREQUAL "")
  message(STATUS "nvfp4: sanitizers ${NVFP4_SANITIZE}")
  # Any report is fatal (UBSan would otherwise print and go on).
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${NVFP4_SANITIZE}>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-sanitize-recover=all>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>)
  add_link_options(-fsanitize=${NVFP4_SANITIZE})
endif()
