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

/// `SO_ATTACH_REUSEPORT_CBPF` and `SO_DETACH_REUSEPORT_BPF`, from
/// `include/uapi/asm-generic/socket.h` (libc exports them for Android only). The numbers are the
/// generic ones, which these architectures use; others (alpha, mips, parisc, sparc) number
/// socket options differently, and there herd does not steer.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "powerpc64",
    target_arch = "s390x"
))]
mod reuseport_bpf {
    pub const ATTACH_CBPF: libc::c_int = 51;
    pub const DETACH: libc::c_int = 68;
}

/// Corresponds to `setsockopt(SO_ATTACH_REUSEPORT_CBPF)` with the classic BPF program
/// `A = random() % among; return A` (see [`socket(7)`]): from now on, each new connection to the
/// `SO_REUSEPORT` group `fd` belongs to goes to one of the group's first `among` sockets (in the
/// order they joined it), picked at random; the others get none. With `among` = 0 the program
/// is detached (`SO_DETACH_REUSEPORT_BPF`) and the kernel's hash of the 4-tuple decides again.
///
/// # Errors
/// `Unsupported` on an architecture whose option numbers herd does not know; the `setsockopt`
/// error otherwise.
///
/// [`socket(7)`]: https://man7.org/linux/man-pages/man7/socket.7.html
pub fn steer_reuseport_group(fd: impl AsFd, among: u32) -> io::Result<()> {
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "powerpc64",
        target_arch = "s390x"
    )))]
    {
        let _ = (fd, among);
        return Err(io::Error::new(io::ErrorKind::Unsupported, "SO_ATTACH_REUSEPORT_CBPF on this architecture"));
    }
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "powerpc64",
        target_arch = "s390x"
    ))]
    {
        if among == 0 {
            return set_int(&fd, libc::SOL_SOCKET, reuseport_bpf::DETACH, 0).or_else(|e| match e.raw_os_error() {
                // Nothing attached: already so.
                Some(libc::ENOENT) => Ok(()),
                _ => Err(super::context(e, "setsockopt(SO_DETACH_REUSEPORT_BPF)")),
            });
        }
        let insn = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
        let program = [
            insn(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32),
            insn(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, among),
            insn(libc::BPF_RET | libc::BPF_A, 0),
        ];
        let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
        // SAFETY: `fprog` points at `program`, which lives for the whole call; the kernel copies
        // the instructions and checks them before it attaches anything; the length passed is
        // the struct's size; the descriptor is borrowed, so it stays open during the call.
        let r = unsafe {
            libc::setsockopt(
                fd.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                reuseport_bpf::ATTACH_CBPF,
                (&raw const fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(super::context(io::Error::last_os_error(), "setsockopt(SO_ATTACH_REUSEPORT_CBPF)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::listen::{TcpOptions, accept, local_tcp_addr, tcp_listener};

    #[test]
    fn a_steered_group_sends_nothing_to_the_sockets_left_out() {
        let options = TcpOptions { reuseport: true, backlog: 128, nonblocking: true };
        let first = tcp_listener("127.0.0.1:0".parse().unwrap(), options).unwrap();
        let addr = local_tcp_addr(&first).unwrap();
        let listeners = [first, tcp_listener(addr, options).unwrap(), tcp_listener(addr, options).unwrap()];
        steer_reuseport_group(&listeners[0], 2).unwrap();
        let clients: Vec<_> = (0..60).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        let mut accepted = [0; 3];
        for (i, l) in listeners.iter().enumerate() {
            while accept(l, true).is_ok() {
                accepted[i] += 1;
            }
        }
        assert_eq!(accepted[2], 0, "the socket left out got connections: {accepted:?}");
        assert_eq!(accepted[0] + accepted[1], clients.len(), "{accepted:?}");
        assert!(accepted[0] > 0 && accepted[1] > 0, "both kept sockets got some: {accepted:?}");
        steer_reuseport_group(&listeners[0], 0).unwrap();
        steer_reuseport_group(&listeners[0], 0).unwrap();
    }
}
