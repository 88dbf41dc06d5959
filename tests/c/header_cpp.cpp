/*
 * The header as a C++11 program includes it: compiles with
 *
 *   c++ -std=c++11 -Wall -Wextra -Werror -pedantic -Iinclude tests/c/header_cpp.cpp \
 *       -Ltarget/debug -lbalena_device -Wl,-rpath,"$PWD/target/debug" -o target/header_cpp
 *
 * and links, which needs the header's extern "C" guard (without it the
 * declarations get C++ linkage and the mangled names are undefined).
 * Run by tests/c_api.rs (header_compiles_as_cpp11_and_links).
 */

#include "balena_device.h"

#include <cstdio>
#include <cstring>
#include <type_traits>

static_assert(BD_CURRENT_APP == 0, "BD_CURRENT_APP is 0");
static_assert(BD_OK == 0 && BD_ERR_INTERNAL == -14, "bd_status values");
static_assert(sizeof(bd_device_state::status) == 32, "bd_device_state::status");
static_assert(std::is_standard_layout<bd_device_state>::value, "bd_device_state is plain data");
static_assert(std::is_same<decltype(&bd_version), const char *(*)(void)>::value,
              "bd_version's signature");

namespace {

int count_line(const char *, size_t, void *userdata)
{
    ++*static_cast<int *>(userdata);
    return 1;
}

} // namespace

int main()
{
    // Every kind of declaration is usable from C++: functions, enum, struct,
    // callback type.
    bd_line_cb cb = count_line;
    bd_status st = BD_ERR_LOCKED;
    bd_device_state state;
    std::memset(&state, 0, sizeof state);

    char expected[32];
    std::snprintf(expected, sizeof expected, "%d.%d.%d", BD_VERSION_MAJOR, BD_VERSION_MINOR,
                  BD_VERSION_PATCH);
    std::printf("bd_version() = %s\n", bd_version());
    std::printf("bd_strerror(BD_ERR_LOCKED) = %s\n", bd_strerror(st));
    if (std::strcmp(bd_version(), expected) != 0 ||
        std::strcmp(bd_version(), BD_VERSION_STRING) != 0) {
        std::printf("header_cpp: version mismatch (macros say %s)\n", expected);
        return 1;
    }
    // Nothing configured (the test clears the environment): an error code,
    // no exception, no crash.
    int rc = bd_state(&state);
    std::printf("bd_state() without configuration = %d (%s): %s\n", rc, bd_strerror(rc),
                bd_last_error());
    if (rc != BD_ERR_NOT_CONFIGURED || cb == nullptr) {
        std::printf("header_cpp: expected BD_ERR_NOT_CONFIGURED\n");
        return 1;
    }
    std::printf("header_cpp: ok\n");
    return 0;
}
