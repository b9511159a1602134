# Warning and sanitizer flags, applied per target (no global definitions).
function(kvpr_target_defaults target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor>)
  # g++ 12 reports false -Wrestrict in libstdc++'s inlined string appends at -O2/-O3 (GCC bug
  # 105329); the warning stays on for other compilers.
  target_compile_options(${target} PRIVATE $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU>>:-Wno-restrict>)
  # g++ 12 at -O3 (Release) reports a false -Warray-bounds inside libstdc++'s stl_tree.h when it
  # inlines nlohmann::json's std::map (GCC meta-bug 56456; nlohmann/json#3808). Off only there.
  target_compile_options(${target} PRIVATE
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU>,$<VERSION_LESS:$<CXX_COMPILER_VERSION>,13>,$<CONFIG:Release>>:-Wno-array-bounds>)
  if(KVPR_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
  endif()
  if(KVPR_FUZZ)
    target_compile_options(${target} PRIVATE -fsanitize=fuzzer-no-link,address)
    target_link_options(${target} PRIVATE -fsanitize=address)
  endif()
  if(KVPR_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=${KVPR_SANITIZE} -fno-omit-frame-pointer
                                             -fno-sanitize-recover=all)
    target_link_options(${target} PRIVATE -fsanitize=${KVPR_SANITIZE})
  endif()
endfunction()

# kvpr_library(name SOURCES ...) builds kvpr_<name> with alias kvpr::<name> and an include/ surface.
function(kvpr_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(kvpr_${name} STATIC ${ARG_SOURCES})
  add_library(kvpr::${name} ALIAS kvpr_${name})
  target_include_directories(kvpr_${name} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include)
  target_link_libraries(kvpr_${name} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  kvpr_target_defaults(kvpr_${name})
endfunction()
