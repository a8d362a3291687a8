// upm::Result<T> — the one error convention of the user-space code.
//
// A function that can fail returns Result<T>: either a value or an Error
// carrying errno (0 when not a system error) and a message.  Callers add
// context on the way up with Error::wrap(), so the final message reads like
// "reading policy `/etc/upm/policies/x.json`: open: No such file or directory".
// Messages are lowercase, have no final period, and quote names in backticks.
// Exceptions are thrown only for fatal user errors and caught near main().
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

namespace upm {

struct Error {
    int err = 0;            // errno value, 0 if not a system error
    std::string message;    // what failed, with the errno text appended if err

    static Error sys(int e, std::string what) {
        return Error{e, what + ": " + std::strerror(e)};
    }
    static Error msg(std::string what) { return Error{0, std::move(what)}; }
    Error wrap(const std::string& context) const& {
        return Error{err, context + ": " + message};
    }
};

template <typename T>
class [[nodiscard]] Result {
public:
    Result(T value) : v_(std::move(value)) {}
    Result(Error error) : v_(std::move(error)) {}

    bool ok() const { return v_.index() == 0; }
    explicit operator bool() const { return ok(); }
    T& value() & { return std::get<0>(v_); }
    const T& value() const& { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    T* operator->() { return &std::get<0>(v_); }
    const T* operator->() const { return &std::get<0>(v_); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    const Error& error() const { return std::get<1>(v_); }

private:
    std::variant<T, Error> v_;
};

// Result<void> equivalent.
struct Ok {};
using Status = Result<Ok>;

}  // namespace upm
