# The Debian package `upm` (`make package`, packaging/README.md): CPack's
# DEB generator over the install rules of every folder, plus what only a
# package installs: /etc/upm/config.json (a conffile), an empty
# /etc/upm/policies for the node's own policies, and the maintainer scripts
# of packaging/deb/.  Configured with UPM_PACKAGE=ON, prefix /usr and
# libdir lib, so that the preload is /usr/lib/upm/libupm-preload.so as the
# node configuration's defaults say.
option(UPM_PACKAGE "Install what the Debian package adds (/etc/upm); make package sets it" OFF)

if(UPM_PACKAGE)
  install(FILES ${CMAKE_SOURCE_DIR}/config/node/config.json DESTINATION /etc/upm)
  install(DIRECTORY DESTINATION /etc/upm/policies)

  # Man pages generated from each program's own --help and --version
  # (help2man, build group), so they never disagree with the program.
  find_program(UPM_HELP2MAN help2man REQUIRED)
  set(upm_man_pages)
  foreach(page
      "upm|1|run programs with page-merging advice, inspect savings, configure engines|--help|--version"
      "upm-runtime|1|runc/crun wrapper that injects the upm preload into annotated containers|--upm-help|--upm-version"
      "upm-hook|1|OCI hook of upm: node log, agent registration, hooks directory injection|--help|--version"
      "upmd|8|upm node agent: container registry, ksmd burst tuning, metrics|--help|--version")
    string(REPLACE "|" ";" page "${page}")
    list(GET page 0 prog)
    list(GET page 1 section)
    list(GET page 2 name)
    list(GET page 3 help)
    list(GET page 4 version)
    set(out ${CMAKE_BINARY_DIR}/man/${prog}.${section}.gz)
    add_custom_command(OUTPUT ${out}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/man
      COMMAND sh -c "\"$0\" --no-info --no-discard-stderr --section=${section} --name=\"$1\" --help-option=${help} --version-option=${version} \"$2\" | gzip -9n > \"$3\""
              ${UPM_HELP2MAN} "${name}" $<TARGET_FILE:${prog}> ${out}
      DEPENDS ${prog}
      VERBATIM)
    list(APPEND upm_man_pages ${out})
    install(FILES ${out} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${section})
  endforeach()
  add_custom_target(man-pages ALL DEPENDS ${upm_man_pages})
endif()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME upm)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "upm maintainers <upm-maintainers@lists.example.org>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "User-guided Page Merging for containers: merge identical memory of serverless functions")
set(CPACK_PACKAGE_DESCRIPTION "upm makes the container runtime advise the kernel which memory of each
container may be merged with identical memory of other containers (KSM, or
synchronously with the upm kernel's MADV_UPM).  The package holds the runc/crun
wrapper upm-runtime, the OCI hook upm-hook, the node agent upmd (systemd unit
enabled, not started), the upm CLI (install-runtime configures containerd,
CRI-O, Docker or podman), the in-container preload and its C API header, and
the example policies.")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "runc | crun")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "containerd | cri-o | docker.io | podman, python3")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_SOURCE_DIR}/packaging/deb/conffiles
    ${CMAKE_SOURCE_DIR}/packaging/deb/postinst
    ${CMAKE_SOURCE_DIR}/packaging/deb/prerm
    ${CMAKE_SOURCE_DIR}/packaging/deb/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
set(CPACK_STRIP_FILES ON)
set(CPACK_PACKAGE_DIRECTORY ${CMAKE_BINARY_DIR}/package)
include(CPack)
