//! CPUID for each vCPU: what KVM supports, with the topology of an N-vCPU guest (one socket,
//! N cores, one thread per core, APIC ID = vCPU index) and the hypervisor bit set.

use kvm_bindings::{KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2};

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: EBX[23:16] (logical processor count) is valid.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 0xb/0x1f level type: SMT.
const LEVEL_TYPE_SMT: u32 = 1;
/// Leaf 0xb/0x1f level type: core.
const LEVEL_TYPE_CORE: u32 = 2;

/// Where one vCPU sits in the guest's topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTopology {
    /// This vCPU's index, also its APIC ID.
    pub cpu_index: u32,
    /// vCPUs in the VM.
    pub cpu_count: u32,
}

impl CpuTopology {
    /// Bits of the APIC ID that number the cores of the package.
    pub fn core_id_bits(&self) -> u32 {
        self.cpu_count.next_power_of_two().trailing_zeros()
    }
}

/// Rewrites `entries` (from KVM_GET_SUPPORTED_CPUID) for the vCPU at `topology`.
pub fn filter_cpuid(entries: &mut Vec<kvm_cpuid_entry2>, topology: CpuTopology) {
    let max_basic = entries
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    let apic_id = topology.cpu_index;
    let count = topology.cpu_count;
    for entry in entries.iter_mut() {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
                if count > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
            }
            4 if entry.eax & 0x1f != 0 => {
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                let cores = (count - 1).min(0x3f);
                entry.eax = (entry.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (cores << 26);
            }
            _ => {}
        }
    }
    for leaf in [0xb, 0x1f] {
        let offered = entries.iter().any(|e| e.function == leaf);
        if max_basic < leaf || (leaf == 0x1f && !offered) {
            continue;
        }
        entries.retain(|e| e.function != leaf);
        entries.extend(extended_topology(leaf, topology));
    }
}

/// The three subleaves of leaf 0xb or 0x1f: SMT level, core level, terminator.
fn extended_topology(leaf: u32, topology: CpuTopology) -> [kvm_cpuid_entry2; 3] {
    let entry = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function: leaf,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level_type << 8) | index,
        edx: topology.cpu_index,
        ..Default::default()
    };
    [
        entry(0, 0, 1, LEVEL_TYPE_SMT),
        entry(
            1,
            topology.core_id_bits(),
            topology.cpu_count,
            LEVEL_TYPE_CORE,
        ),
        entry(2, 0, 0, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    /// A supported list shaped like this host's: max leaf 0x1f, APIC ID garbage in leaf 1,
    /// leaf 4 with L1d, L1i, L2, L3 and the null terminator, leaf 0xb/0x1f all zero.
    fn supported(max_leaf: u32) -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(0, 0, max_leaf, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            leaf(1, 0, 0xc06f2, 0x7f02_0800, 0x0120_2000, 0x0f8b_fbff),
            leaf(4, 0, 0x0000_0121, 0x01c0_003f, 0x3f, 0),
            leaf(4, 1, 0x0000_0122, 0x01c0_003f, 0x3f, 0),
            leaf(4, 2, 0x0000_0143, 0x03c0_003f, 0x3ff, 0),
            leaf(4, 3, 0x0000_0163, 0x0380_003f, 0xbfff, 6),
            leaf(4, 4, 0, 0, 0, 0),
            leaf(0xb, 0, 0, 0, 0, 0),
            leaf(0x1f, 0, 0, 0, 0, 0),
            leaf(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
        ]
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    #[test]
    fn leaf1_carries_apic_id_count_htt_and_hypervisor() {
        let mut entries = supported(0x1f);
        filter_cpuid(
            &mut entries,
            CpuTopology {
                cpu_index: 3,
                cpu_count: 4,
            },
        );
        let l1 = find(&entries, 1, 0);
        assert_eq!(l1.ebx >> 24, 3, "APIC ID");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical processors");
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size and brand kept");
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(l1.ecx & 0x7fff_ffff, 0x0120_2000, "other features kept");

        let mut single = supported(0x1f);
        single[1].edx |= LEAF1_EDX_HTT;
        filter_cpuid(
            &mut single,
            CpuTopology {
                cpu_index: 0,
                cpu_count: 1,
            },
        );
        let l1 = find(&single, 1, 0);
        assert_eq!(l1.ebx >> 16, 1);
        assert_eq!(l1.edx & LEAF1_EDX_HTT, 0, "HTT cleared for one vCPU");
    }

    #[test]
    fn leaf4_counts_cores_and_l3_sharing() {
        let mut entries = supported(0x1f);
        filter_cpuid(
            &mut entries,
            CpuTopology {
                cpu_index: 1,
                cpu_count: 6,
            },
        );
        for index in 0..3 {
            let e = find(&entries, 4, index);
            assert_eq!(e.eax >> 26, 5, "cores per package - 1, subleaf {index}");
            assert_eq!((e.eax >> 14) & 0xfff, 0, "L1/L2 private, subleaf {index}");
            assert_eq!(
                e.eax & 0x3fff,
                supported(0x1f)[2 + index as usize].eax & 0x3fff
            );
        }
        let l3 = find(&entries, 4, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 5, "L3 shared by all");
        assert_eq!(find(&entries, 4, 4).eax, 0, "terminator untouched");
    }

    #[test]
    fn extended_topology_levels() {
        let mut entries = supported(0x1f);
        let topology = CpuTopology {
            cpu_index: 2,
            cpu_count: 3,
        };
        filter_cpuid(&mut entries, topology);
        for function in [0xb, 0x1f] {
            let smt = find(&entries, function, 0);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
            let core = find(&entries, function, 1);
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
            let end = find(&entries, function, 2);
            assert_eq!((end.ebx, end.ecx >> 8, end.edx), (0, 0, 2));
            assert_eq!(smt.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
            assert_eq!(entries.iter().filter(|e| e.function == function).count(), 3);
        }
        assert_eq!(find(&entries, 0x4000_0000, 0).ebx, 0x4b4d_564b);
    }

    #[test]
    fn topology_leaves_only_where_the_cpu_has_them() {
        let mut entries = supported(0xd);
        entries.retain(|e| e.function != 0x1f);
        filter_cpuid(
            &mut entries,
            CpuTopology {
                cpu_index: 0,
                cpu_count: 2,
            },
        );
        assert_eq!(entries.iter().filter(|e| e.function == 0xb).count(), 3);
        assert!(entries.iter().all(|e| e.function != 0x1f));

        let mut old = supported(0xa);
        old.retain(|e| e.function != 0x1f);
        filter_cpuid(
            &mut old,
            CpuTopology {
                cpu_index: 0,
                cpu_count: 2,
            },
        );
        assert_eq!(old.iter().filter(|e| e.function == 0xb).count(), 1);
    }

    #[test]
    fn core_id_bits_round_up() {
        let bits = |n| {
            CpuTopology {
                cpu_index: 0,
                cpu_count: n,
            }
            .core_id_bits()
        };
        assert_eq!(
            [bits(1), bits(2), bits(3), bits(4), bits(5), bits(254)],
            [0, 1, 2, 2, 3, 8]
        );
    }
}
