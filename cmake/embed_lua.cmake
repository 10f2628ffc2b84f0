# Writes a C file and its header holding every Lua script of a folder, so the
# scripts live as .lua files (read, linted and diffed as Lua) and the daemons
# need no files at run time. lua/claim.lua becomes `const char LUA_CLAIM[]`
# (with PREFIX=LUA_).
# Called as: cmake -DDIR=sender/lua -DOUT_C=x.c -DOUT_H=x.h -DPREFIX=LUA_ -P embed_lua.cmake
file(GLOB FILES ${DIR}/*.lua)
list(SORT FILES)
get_filename_component(hname ${OUT_H} NAME)
string(MAKE_C_IDENTIFIER "${hname}" guard)
string(TOUPPER "${guard}" guard)
set(c "/* generated from ${DIR} by cmake/embed_lua.cmake: do not edit */\n#include \"${hname}\"\n")
set(h "/* generated from ${DIR} by cmake/embed_lua.cmake: do not edit */\n#ifndef ${guard}\n#define ${guard}\n")
foreach(f ${FILES})
  get_filename_component(name ${f} NAME_WE)
  string(TOUPPER "${PREFIX}${name}" sym)
  file(READ ${f} hex HEX)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
  string(APPEND c "const char ${sym}[] = {${hex}0x00};\n")
  string(APPEND h "extern const char ${sym}[];\n")
endforeach()
string(APPEND h "#endif\n")
file(WRITE ${OUT_C} "${c}")
file(WRITE ${OUT_H} "${h}")
