/* The constructor of libupm-preload.so.
 *
 * It lives in its own static library, linked (whole) after an explicit
 * libstdc++.a, so that its .init_array entry comes after those of libupm-inproc,
 * spdlog and the static libstdc++ (eh_alloc, locale, system_error): the
 * dynamic loader runs a library's .init_array in link order, and the
 * preload's start-up code needs those statics constructed.  A test checks
 * the order (test_preload.py::test_constructor_runs_last). */
void upm_preload_start(void);

__attribute__((constructor)) static void upm_preload_constructor(void)
{
	upm_preload_start();
}
