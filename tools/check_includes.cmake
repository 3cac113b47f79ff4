# cmake -DSRC=<repo>/src -P check_includes.cmake: fails when a source under src/ includes a path that starts
# with "..". Such an include is found relative to the including file, past the per-layer include paths, so
# it is the one way an upward #include could still compile (see "One static library per layer" in
# CMakeLists.txt). Headers are included by their folder ("io/safetensors.h"), never relatively.
file(GLOB_RECURSE sources ${SRC}/*.h ${SRC}/*.cpp)
set(bad "")
foreach(f IN LISTS sources)
  file(STRINGS ${f} lines REGEX "^[ \t]*#[ \t]*include[ \t]*\"\\.\\.")
  foreach(line IN LISTS lines)
    file(RELATIVE_PATH rel ${SRC} ${f})
    string(APPEND bad "\n  src/${rel}: ${line}")
  endforeach()
endforeach()
if(bad)
  message(FATAL_ERROR "relative includes bypass the layer include paths; include by folder instead:${bad}")
endif()
