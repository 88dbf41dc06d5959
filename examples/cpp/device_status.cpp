/*
 * device_status (C++17): a small RAII wrapper over the C API — errors become
 * exceptions carrying bd_last_error(), text comes back as std::string, and
 * the update lock is a scope guard.
 *
 * Build (from the repository root, after `cargo build`):
 *
 *   c++ -std=c++17 -Wall -Wextra -Werror -pedantic -Iinclude examples/cpp/device_status.cpp \
 *       -Ltarget/debug -lbalena_device -Wl,-rpath,"$PWD/target/debug" -o target/device_status_cpp
 *
 * Run (inside a balenaOS container with the io.balena.features.supervisor-api
 * label):
 *
 *   ./target/device_status_cpp
 *
 * Against the supervisor simulator: start it in another terminal with
 * `cargo run --example simulator` (127.0.0.1:48484), then
 *
 *   export BALENA_SUPERVISOR_ADDRESS=http://127.0.0.1:48484
 *   export BALENA_SUPERVISOR_API_KEY=sim-key-0123456789abcdef
 *   export BALENA_APP_ID=1234
 *   ./target/device_status_cpp --lock-path /tmp/bd-example/updates.lock
 *
 * Exit status: 0 done, 1 an error (printed as "error: ..."), 2 usage.
 */

#include "balena_device.h"

#include <cstring>
#include <iostream>
#include <stdexcept>
#include <string>

namespace balena {

// A failed call: what() is "<function>: <bd_last_error()>", code() the bd_status.
class Error : public std::runtime_error {
public:
    Error(const std::string &what, int code) : std::runtime_error(what), code_(code) {}
    int code() const noexcept { return code_; }

private:
    int code_;
};

// Throws balena::Error for a negative status; passes anything else through.
inline int check(int rc, const char *function)
{
    if (rc < 0)
        throw Error(std::string(function) + ": " + bd_last_error(), rc);
    return rc;
}

// Calls a (char *buf, size_t len) text function, growing the buffer when the
// answer did not fit (the return value is the full length).
template <typename Fn> std::string text(const char *function, Fn fn)
{
    std::string buf(256, '\0');
    for (;;) {
        int n = check(fn(buf.data(), buf.size()), function);
        if (static_cast<size_t>(n) < buf.size()) {
            buf.resize(static_cast<size_t>(n));
            return buf;
        }
        buf.assign(static_cast<size_t>(n) + 1, '\0');
    }
}

// The balenaOS update lock, held for the lifetime of the object.
class UpdateLock {
public:
    UpdateLock() { check(bd_lock_updates(), "bd_lock_updates"); }
    ~UpdateLock() { bd_unlock_updates(); }
    UpdateLock(const UpdateLock &) = delete;
    UpdateLock &operator=(const UpdateLock &) = delete;
};

inline bd_device_state device_state()
{
    bd_device_state s;
    check(bd_state(&s), "bd_state");
    return s;
}

} // namespace balena

int main(int argc, char **argv)
{
    if (argc == 3 && std::strcmp(argv[1], "--lock-path") == 0) {
        if (bd_set_update_lock_path(argv[2]) != BD_OK) {
            std::cerr << "bad lock path: " << bd_last_error() << "\n";
            return 2;
        }
    } else if (argc != 1) {
        std::cerr << "usage: " << argv[0] << " [--lock-path /absolute/path/updates.lock]\n";
        return 2;
    }

    try {
        std::cout << "device: " << balena::text("bd_device_name", bd_device_name) << "\n";
        std::cout << "supervisor: " << balena::text("bd_supervisor_version", bd_supervisor_version)
                  << "\n";
        const bd_device_state s = balena::device_state();
        std::cout << "status: " << s.status << "\n"
                  << "commit: " << s.commit << "\n"
                  << "os: " << s.os_version << "\n"
                  << "update pending: " << (s.update_pending ? "yes" : "no") << "\n";
        {
            balena::UpdateLock lock;
            std::cout << "lock held: " << bd_updates_locked() << "\n";
            // ... work that must not be interrupted by an update ...
        }
        std::cout << "lock held: " << bd_updates_locked() << "\n";
    } catch (const balena::Error &e) {
        std::cerr << "error: " << e.what() << " [" << bd_strerror(e.code()) << "]\n";
        return 1;
    }
    return 0;
}
