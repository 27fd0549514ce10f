//! Draining a split virtqueue: checking the driver's available index, handing each chain to
//! the device, and putting it on the used ring.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// The driver corrupted a queue: the device stops using it until the driver resets it.
#[derive(Debug, thiserror::Error)]
pub enum BrokenQueue {
    /// The available ring's index cannot be read.
    #[error("cannot read the available ring index")]
    AvailIndex(#[source] virtio_queue::Error),
    /// The available index moved ahead of what the device used by more than the queue size.
    #[error("available index {avail} is {ahead} entries ahead of the device, the queue has {size}")]
    AvailAhead {
        /// The driver's available index.
        avail: u16,
        /// Entries it claims are new.
        ahead: u16,
        /// The queue size.
        size: u16,
    },
    /// A used element cannot be written.
    #[error("cannot write used element for descriptor {head}")]
    AddUsed {
        /// The chain's head.
        head: u16,
        /// virtio-queue's error.
        #[source]
        source: virtio_queue::Error,
    },
}

/// A descriptor chain over the VM's memory.
pub type Chain<'m> = DescriptorChain<&'m GuestMemoryMmap>;

/// Hands each available chain of `queue` to `handle`, which returns the bytes it wrote into
/// the chain, and puts the chain on the used ring with that length. Returns how many chains
/// were used.
pub fn drain_queue<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    handle: impl FnMut(Chain<'m>) -> u32,
) -> Result<usize, BrokenQueue> {
    use_chains(queue, mem, usize::MAX, handle)
}

/// As [`drain_queue`], for at most `limit` chains.
pub fn use_chains<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    limit: usize,
    mut handle: impl FnMut(Chain<'m>) -> u32,
) -> Result<usize, BrokenQueue> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(BrokenQueue::AvailIndex)?;
    let ahead = (avail - Wrapping(queue.next_avail())).0;
    if ahead > queue.size() {
        return Err(BrokenQueue::AvailAhead {
            avail: avail.0,
            ahead,
            size: queue.size(),
        });
    }
    let mut used = 0;
    // At most `ahead` chains: the driver cannot make the device loop by moving the index on.
    for _ in 0..usize::from(ahead).min(limit) {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let written = handle(chain);
        queue
            .add_used(mem, head, written)
            .map_err(|source| BrokenQueue::AddUsed { head, source })?;
        used += 1;
    }
    Ok(used)
}
