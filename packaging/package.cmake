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
