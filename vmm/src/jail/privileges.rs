//! Dropping the jailed VMM's privileges once its devices are open: an empty capability
//! bounding set, the jail's group (and no other) and user, no capabilities left in any set,
//! and no way to gain privileges again (`PR_SET_NO_NEW_PRIVS`). Called while the process has
//! one thread: credentials and capabilities belong to threads.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

/// The user and group the jailed VMM becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropPrivileges {
    /// The user ID.
    pub uid: u32,
    /// The group ID (the only group kept).
    pub gid: u32,
    /// The read end of a pipe whose write end only the outer process holds: it hangs up
    /// when that process has ended.
    pub outer_alive: RawFd,
}

/// A step of dropping privileges failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot drop the jailed VMM's privileges: {step}")]
pub struct DropPrivilegesError {
    /// The step.
    pub step: &'static str,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

fn fail(step: &'static str) -> impl FnOnce(io::Error) -> DropPrivilegesError {
    move |source| DropPrivilegesError { step, source }
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapabilityHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapabilityData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's capability sets, two words each.
fn capabilities() -> io::Result<[CapabilityData; 2]> {
    let mut header = CapabilityHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapabilityData::default(); 2];
    // SAFETY: capget writes two CapabilityData (the layout of struct
    // __user_cap_data_struct) for version 3 into `data`, which has room for them.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

/// Empties the calling thread's effective, permitted and inheritable sets.
fn clear_capabilities() -> io::Result<()> {
    let mut header = CapabilityHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapabilityData::default(); 2];
    // SAFETY: capset reads a header and two CapabilityData for version 3; both live for the
    // call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops every capability in the bounding set the kernel knows (up to the first it calls
/// invalid).
fn empty_bounding_set() -> io::Result<()> {
    for capability in 0..64 {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) };
        if rc != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EINVAL) && capability > 0 {
                return Ok(());
            }
            return Err(error);
        }
    }
    Ok(())
}

impl DropPrivileges {
    /// Drops them; afterwards the thread has no capability in any set, runs as `uid`:`gid`
    /// with no supplementary groups, and cannot regain privileges through exec.
    pub fn apply(&self) -> Result<(), DropPrivilegesError> {
        empty_bounding_set().map_err(fail("emptying the capability bounding set"))?;
        // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        };
        if rc != 0 {
            return Err(fail("clearing the ambient capabilities")(
                io::Error::last_os_error(),
            ));
        }
        let gid = nix::unistd::Gid::from_raw(self.gid);
        let uid = nix::unistd::Uid::from_raw(self.uid);
        nix::unistd::setgroups(&[gid])
            .map_err(|e| fail("setting the supplementary groups")(e.into()))?;
        nix::unistd::setresgid(gid, gid, gid)
            .map_err(|e| fail("setting the group ID")(e.into()))?;
        nix::unistd::setresuid(uid, uid, uid).map_err(|e| fail("setting the user ID")(e.into()))?;
        // A user other than root lost its capabilities with the last call; root keeps them
        // until they are cleared.
        clear_capabilities().map_err(fail("clearing the capabilities"))?;
        nix::sys::prctl::set_no_new_privs().map_err(|e| fail("setting no_new_privs")(e.into()))?;
        // The kernel forgets the parent-death signal when credentials change: ask again,
        // then make sure the outer process did not end before that.
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
            .map_err(|e| fail("asking for SIGKILL when the outer process ends")(e.into()))?;
        // SAFETY: the descriptor stays open for the whole jailed run (`jail::jailed_child`
        // holds it).
        let pipe = unsafe { BorrowedFd::borrow_raw(self.outer_alive) };
        let mut fds = [PollFd::new(pipe, PollFlags::POLLIN)];
        nix::poll::poll(&mut fds, PollTimeout::ZERO)
            .map_err(|e| fail("checking the outer process is alive")(e.into()))?;
        if fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
        {
            return Err(fail("checking the outer process is alive")(
                io::Error::other("it has ended"),
            ));
        }
        let left = capabilities().map_err(fail("reading the capabilities back"))?;
        if left
            .iter()
            .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0)
        {
            return Err(fail("checking the capabilities are gone")(
                io::Error::other("some are left"),
            ));
        }
        Ok(())
    }
}
