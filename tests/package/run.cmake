# Builds and runs tests/package/consumer against lowrank, either installed into
# a scratch prefix and found with find_package (MODE=install) or pulled in with
# add_subdirectory (MODE=subdirectory). Run by ctest: cmake -DMODE=... -P run.cmake
cmake_minimum_required(VERSION 3.25)

set(work "${SCRATCH_DIR}/${MODE}")
file(REMOVE_RECURSE "${work}")
file(MAKE_DIRECTORY "${work}")

set(configure_args -S "${LOWRANK_SOURCE_DIR}/tests/package/consumer" -B "${work}/build"
    -G "${GENERATOR}" -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release)
if(MODE STREQUAL "install")
  execute_process(COMMAND ${CMAKE_COMMAND} --install "${LOWRANK_BINARY_DIR}" --prefix "${work}/prefix"
                  COMMAND_ERROR_IS_FATAL ANY)
  if(NOT EXISTS "${work}/prefix/include/lowrank/lowrank.hpp")
    message(FATAL_ERROR "the install did not put lowrank.hpp under include/lowrank")
  endif()
  list(APPEND configure_args -DCMAKE_PREFIX_PATH=${work}/prefix -DCONSUMER_MODE=find_package)
elseif(MODE STREQUAL "subdirectory")
  list(APPEND configure_args -DCONSUMER_MODE=subdirectory -DLOWRANK_SOURCE_DIR=${LOWRANK_SOURCE_DIR}
       -DLOWRANK_USE_BLAS=${USE_BLAS})
else()
  message(FATAL_ERROR "MODE must be install or subdirectory, not '${MODE}'")
endif()

execute_process(COMMAND ${CMAKE_COMMAND} ${configure_args} COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --build "${work}/build" COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND "${work}/build/consumer" COMMAND_ERROR_IS_FATAL ANY)
