# htcore's C runtime without Python: libhtcore.a and libhtcore.so (the C API of
# cpp/include/htcore/htcore.h over cpp/runtime/ and the kernels it needs), the htcore-run program,
# and `cmake --install` rules with a CMake package (find_package(htcore), htcore::runtime).
find_package(nlohmann_json 3.2 QUIET)
if(NOT nlohmann_json_FOUND)
  message(FATAL_ERROR "htcore's C library reads model headers with nlohmann/json: install it "
                      "(Debian/Ubuntu: apt-get install nlohmann-json3-dev) and rebuild.")
endif()

set(HTCORE_RUNTIME_SOURCES
  cpp/csr_kernels.cpp cpp/sell.cpp cpp/conv2d.cpp cpp/parallel.cpp cpp/image_ops.cpp
  cpp/runtime/safetensors.cpp cpp/runtime/model_file.cpp cpp/runtime/executor.cpp cpp/runtime/capi.cpp)
add_library(htcore_runtime_objects OBJECT ${HTCORE_RUNTIME_SOURCES})
# Only the C API's functions (marked HTCORE_API) are exported from the shared library.
set_target_properties(htcore_runtime_objects PROPERTIES POSITION_INDEPENDENT_CODE ON CXX_VISIBILITY_PRESET hidden
                                                        VISIBILITY_INLINES_HIDDEN ON)
target_include_directories(htcore_runtime_objects PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/cpp
                                                         ${CMAKE_CURRENT_SOURCE_DIR}/cpp/include)
find_package(Threads REQUIRED)  # htcore's thread pool (cpp/parallel.cpp)
target_link_libraries(htcore_runtime_objects PRIVATE nlohmann_json::nlohmann_json)
if(HTCORE_OPENMP)
  target_link_libraries(htcore_runtime_objects PUBLIC OpenMP::OpenMP_CXX)
else()
  # The kernels' OpenMP pragmas are ignored; cpp/runtime/no_openmp/omp.h stands in for <omp.h>.
  target_include_directories(htcore_runtime_objects BEFORE PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/cpp/runtime/no_openmp)
  target_compile_options(htcore_runtime_objects PRIVATE -Wno-unknown-pragmas)
endif()
if(HTCORE_PORTABLE)
  target_compile_definitions(htcore_runtime_objects PRIVATE HTCORE_PORTABLE)
endif()
htcore_compile_flags(htcore_runtime_objects)

set(HTCORE_OMP_LINK Threads::Threads)
if(HTCORE_OPENMP)
  list(APPEND HTCORE_OMP_LINK OpenMP::OpenMP_CXX)
endif()
include(GNUInstallDirs)
add_library(htcore_runtime_static STATIC $<TARGET_OBJECTS:htcore_runtime_objects>)
add_library(htcore_runtime_shared SHARED $<TARGET_OBJECTS:htcore_runtime_objects>)
foreach(target htcore_runtime_static htcore_runtime_shared)
  set_target_properties(${target} PROPERTIES OUTPUT_NAME htcore)
  target_include_directories(${target} INTERFACE $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/cpp/include>
                                                 $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
  if(HTCORE_SANITIZE)
    target_link_options(${target} PUBLIC -fsanitize=address,undefined)
  endif()
endforeach()
# The static library's consumers link OpenMP's runtime too: by its path once installed (so a
# consumer needs no find_package(OpenMP)), and the C++ standard library (their project enables CXX).
target_link_libraries(htcore_runtime_static PUBLIC $<BUILD_INTERFACE:${HTCORE_OMP_LINK}>)
if(HTCORE_OPENMP)
  foreach(lib ${OpenMP_CXX_LIBRARIES})
    target_link_libraries(htcore_runtime_static INTERFACE $<INSTALL_INTERFACE:${lib}>)
  endforeach()
endif()
target_link_libraries(htcore_runtime_shared PRIVATE ${HTCORE_OMP_LINK})
set_target_properties(htcore_runtime_static PROPERTIES EXPORT_NAME runtime_static)
set_target_properties(htcore_runtime_shared PROPERTIES EXPORT_NAME runtime VERSION ${PROJECT_VERSION}
                                                       SOVERSION ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR})

# The runner links the static library: one self-contained binary.
add_executable(htcore-run cpp/tools/htcore_run.cpp)
target_link_libraries(htcore-run PRIVATE htcore_runtime_static)
htcore_compile_flags(htcore-run)

include(CMakePackageConfigHelpers)
install(TARGETS htcore_runtime_static htcore_runtime_shared EXPORT htcoreTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS htcore-run RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES cpp/include/htcore/htcore.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/htcore)
install(EXPORT htcoreTargets NAMESPACE htcore:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/htcore)
configure_package_config_file(cmake/htcoreConfig.cmake.in ${CMAKE_CURRENT_BINARY_DIR}/htcoreConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/htcore)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/htcoreConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/htcoreConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/htcoreConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/htcore)
