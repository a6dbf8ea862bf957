//! Socket options rustix has no wrapper for, set with `setsockopt(2)` directly.
//!
//! [`setsockopt(2)`]: https://man7.org/linux/man-pages/man2/setsockopt.2.html

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// `setsockopt(fd, level, name, &value, sizeof(int))` for an `int` option.
fn set_int(fd: impl AsFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int for the whole call and the length passed is its size; the
    // descriptor is borrowed, so it stays open during the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `TCP_DEFER_ACCEPT` (see [`tcp(7)`]): the kernel completes `accept` only once the client
/// has sent data (or after about `seconds`), so a worker wakes once per connection with its
/// request already there, instead of once to accept and once more to read — nginx's `deferred`.
///
/// [`tcp(7)`]: https://man7.org/linux/man-pages/man7/tcp.7.html
pub fn set_defer_accept(fd: impl AsFd, seconds: i32) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, seconds)
        .map_err(|e| super::context(e, "setsockopt(TCP_DEFER_ACCEPT)"))
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` (see [`ip(7)`]): a later `bind(addr:0)` picks the source
/// address only, and leaves the port to `connect`, which knows the whole 4-tuple and can share a
/// port across destinations — so a client that binds many source addresses does not run out of
/// ports sooner than one that binds none.
///
/// [`ip(7)`]: https://man7.org/linux/man-pages/man7/ip.7.html
pub fn set_bind_address_no_port(fd: impl AsFd) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
        .map_err(|e| super::context(e, "setsockopt(IP_BIND_ADDRESS_NO_PORT)"))
}
