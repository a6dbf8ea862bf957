//! **reuseport** — one `SO_REUSEPORT` listener per worker slot. The kernel spreads incoming
//! connections over the listeners bound to the same address by a hash of the connection's
//! 4-tuple, so each worker has its own accept queue and nobody races.
//!
//! The primary creates and owns every listener, and worker `i` gets listener `i`. Why the
//! primary and not the worker: a listener's accept queue dies with its last descriptor. If
//! worker 3 owned listener 3, connections already hashed to it would be reset when it crashed
//! or was replaced. Because the primary keeps a copy, the queue survives, and the replacement for
//! slot 3 inherits listener 3 with the connections still waiting in it.
//!
//! # A slot without a worker
//!
//! The kernel goes on hashing connections to a listener as long as it is open, whether anyone
//! accepts on it or not. So whenever a slot has no live worker — its worker was disconnected
//! or killed and is not replaced, it is waiting out a restart back-off, it is being scaled away
//! — the **primary accepts on that slot's listener itself** and hands the connections to the
//! other workers over their lanes, as handoff mode does. Nothing waits in a queue nobody
//! serves. When a worker fills the slot again, the primary stops.
//!
//! # Scaling down without losing a handshake
//!
//! Closing one listener of a `SO_REUSEPORT` group resets the connections still queued on it
//! unless `net.ipv4.tcp_migrate_req` is 1 (Linux 5.14), and while it is open the kernel keeps
//! hashing new ones to it — so draining it first leaves a window. herd closes that window by
//! **steering**: as soon as slots are scaled away, it attaches a three-instruction classic BPF
//! program to the group (`SO_ATTACH_REUSEPORT_CBPF`) that sends every new connection to one of
//! the listeners it keeps, at random. The removed slots' listeners get nothing new; the primary
//! serves what they still hold while their workers drain, accepts what is left once they have
//! exited, and closes them. When no slot is on its way out, the program is detached and the
//! kernel's hash decides again. This works with `tcp_migrate_req` off — the default.
//!
//! The program picks by position in the group, which is the order the listeners joined it, with
//! the last one moved into the place of one that leaves. herd mirrors that order, and scales
//! down from the highest slot, so the listeners it keeps are always the group's first ones.

use std::io;

use super::{Distribution, Slots};
use crate::ListenAddr;
use crate::accept::{Wait, WorkerAccept};
use crate::listener::{BindOptions, Listener};
use crate::upgrade::{Line, Writer};
use std::os::fd::AsFd;

/// Reuseport mode: slot `i`'s listener at index `i`.
#[derive(Debug)]
pub(crate) struct Reuseport {
    listeners: Vec<Option<Listener>>,
    /// The slots whose listeners are in the group, in the kernel's order (see the module docs).
    group: Vec<usize>,
    /// How many of the group's first listeners new connections are steered to; 0: not steered.
    steered: usize,
    addr: ListenAddr,
    options: BindOptions,
}

impl Reuseport {
    /// Binds `slots` listeners to `addr` with `SO_REUSEPORT`. With port 0, the first listener
    /// gets a port from the kernel and the others bind that same port.
    ///
    /// `inherited` listeners (socket activation) come first, one per slot; the missing ones
    /// are bound to the first one's address, which needs `SO_REUSEPORT` on it.
    pub(crate) fn bind(
        addr: &ListenAddr,
        slots: usize,
        base: BindOptions,
        inherited: Vec<super::InheritedListener>,
    ) -> io::Result<(Reuseport, ListenAddr)> {
        let ListenAddr::Tcp(mut tcp) = addr.clone() else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "reuseport mode needs a TCP address, not {addr}: Unix sockets cannot share a path with SO_REUSEPORT"
                ),
            ));
        };
        let options = BindOptions { reuseport: true, nonblocking: true, ..base };
        let mut listeners = Vec::with_capacity(slots);
        let given = inherited.len();
        if let Some(first) = inherited.first() {
            if given < slots && !first.reuseport {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "reuseport mode needs one listener per worker: {given} passed for {slots} workers, and the \
                         first has no SO_REUSEPORT to bind more to {addr} (set ReusePort=yes in the .socket unit, or \
                         pass one socket per worker)"
                    ),
                ));
            }
        }
        for i in inherited {
            i.listener.set_nonblocking(true)?;
            tcp = i.listener.tcp_addr()?;
            listeners.push(Some(i.listener));
        }
        for _ in given.min(slots)..slots {
            let listener = Listener::bind(&ListenAddr::Tcp(tcp), options)?;
            tcp = listener.tcp_addr()?;
            listeners.push(Some(listener));
        }
        let bound = ListenAddr::Tcp(tcp);
        let group = (0..listeners.len()).collect();
        Ok((Reuseport { listeners, group, steered: 0, addr: bound.clone(), options }, bound))
    }
}

impl Reuseport {
    pub(crate) fn import(lines: &[Line]) -> io::Result<Reuseport> {
        let head = super::line(lines, "mode_reuseport")?;
        let addr: ListenAddr = head.text("addr")?.parse().map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("hand-over state: mode_reuseport addr: {e}"))
        })?;
        let group: Vec<usize> = match head.text("group")?.as_str() {
            "" => Vec::new(),
            list => list.split(',').map(|s| s.parse().unwrap_or(usize::MAX)).collect(),
        };
        let mut listeners: Vec<Option<Listener>> = Vec::new();
        for l in lines.iter().filter(|l| l.kind == "reuseport_listener") {
            let slot: usize = l.get("slot")?;
            if listeners.len() <= slot {
                listeners.resize_with(slot + 1, || None);
            }
            listeners[slot] = Some(Listener::adopt(l.fd("fd")?));
        }
        if group.iter().any(|&s| s >= listeners.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "hand-over state: reuseport group names a slot with no listener",
            ));
        }
        let options = BindOptions {
            reuseport: true,
            backlog: head.get("backlog")?,
            nonblocking: true,
            defer_accept: head.opt("defer_accept")?,
        };
        Ok(Reuseport { listeners, group, steered: head.get("steered")?, addr, options })
    }
}

impl Distribution for Reuseport {
    fn export(&self, w: &mut Writer) {
        let group: Vec<String> = self.group.iter().map(usize::to_string).collect();
        w.line("mode_reuseport")
            .text("addr", &self.addr.to_string())
            .text("group", &group.join(","))
            .kv("steered", self.steered)
            .kv("backlog", self.options.backlog)
            .kv("defer_accept", self.options.defer_accept.map_or("-".to_owned(), |s| s.to_string()));
        for (slot, l) in self.listeners.iter().enumerate() {
            if let Some(l) = l {
                w.line("reuseport_listener").kv("slot", slot).fd("fd", l.as_fd());
            }
        }
    }

    /// Every worker gets a lane: the primary hands it connections from slots without a worker.
    fn uses_lanes(&self) -> bool {
        true
    }

    fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    fn listener(&self, id: usize) -> Option<&Listener> {
        self.listeners.get(id).and_then(Option::as_ref)
    }

    /// While the slot has no live worker (see the module docs).
    fn primary_accepts(&self, id: usize, slots: &dyn Slots) -> bool {
        !slots.live(id)
    }

    /// A slot added at run time (SIGTTIN) gets a listener on the address the others use.
    fn prepare_slot(&mut self, slot: usize) -> io::Result<()> {
        if self.listeners.len() <= slot {
            self.listeners.resize_with(slot + 1, || None);
        }
        if self.listeners[slot].is_none() {
            self.listeners[slot] = Some(Listener::bind(&self.addr, self.options)?);
            self.group.push(slot);
        }
        Ok(())
    }

    fn release_slot(&mut self, slot: usize) -> Option<Listener> {
        self.listeners.get_mut(slot).and_then(Option::take)
    }

    fn slot_closed(&mut self, slot: usize, target: usize) -> Option<String> {
        // The kernel moves the group's last listener into the place of the one that left.
        if let Some(i) = self.group.iter().position(|&s| s == slot) {
            self.group.swap_remove(i);
        }
        self.target_changed(target)
    }

    fn target_changed(&mut self, target: usize) -> Option<String> {
        let keep = self.group.iter().filter(|&&s| s < target).count();
        let among = if keep == self.group.len() { 0 } else { keep };
        if among == self.steered {
            return None;
        }
        if self.group[..keep].iter().any(|&s| s >= target) {
            return Some(format!(
                "cannot steer new connections away from the slots being scaled away (group order {:?}); \
                 connections hashed to them are served by the primary until they close",
                self.group
            ));
        }
        let any = self.group.first().and_then(|&s| self.listeners[s].as_ref())?;
        match crate::sys::sockopt::steer_reuseport_group(any, among as u32) {
            Ok(()) => {
                self.steered = among;
                None
            }
            Err(e) => Some(format!("steering new connections away from the slots being scaled away: {e}")),
        }
    }

    fn worker_accept(&mut self, slot: usize) -> Option<WorkerAccept> {
        // Nobody else waits on this listener: there is no herd to avoid.
        self.listeners.get_mut(slot).and_then(Option::take).map(|listener| WorkerAccept::new(listener, Wait::Own))
    }
}
