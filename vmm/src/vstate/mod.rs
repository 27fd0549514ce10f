//! KVM state: the /dev/kvm handle, the VM, its vCPUs and the threads that run them.

pub mod control;
pub mod kick;
pub mod kvm;
pub mod vcpu;
pub mod vcpu_run;
pub mod vm;
