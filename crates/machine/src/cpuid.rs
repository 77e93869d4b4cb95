//! CPUID for each vCPU: what KVM supports, with topology leaves that make the guest see exactly
//! the configured number of CPUs, one thread per core, one package. No vendor is assumed: both
//! Intel's (0x4, 0xB, 0x1F) and AMD's (0x8000_0008, 0x8000_001E) leaves are set when present.

use virtkit_hypervisor::CpuidEntry;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE_TIMER: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;

/// Bits needed to hold `count` distinct IDs.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Sets the TSC-deadline timer bit (leaf 1, ECX bit 24), which KVM's supported CPUID leaves
/// clear even where its in-kernel LAPIC has the mode. Without it Linux calibrates the LAPIC timer
/// against the ACPI PM timer for 100 ms of ticks: ~430 port exits, and 1.4 s of a stock kernel's
/// boot in the emulated KVM host ("APIC calibration not consistent with PM-Timer").
pub fn offer_tsc_deadline_timer(entries: &mut [CpuidEntry]) {
    for e in entries.iter_mut().filter(|e| e.function == LEAF_FEATURES) {
        e.ecx |= ECX_TSC_DEADLINE_TIMER;
    }
}

/// The CPUID table for vCPU `index` (its APIC ID) of `count` vCPUs.
pub fn vcpu_cpuid(supported: &[CpuidEntry], index: u32, count: u32) -> Vec<CpuidEntry> {
    let core_bits = id_bits(count);
    let mut out: Vec<CpuidEntry> = supported.to_vec();
    for e in out.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (index << 24) | ((count & 0xff) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
                let cache_level = (e.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3ff) | ((count - 1) << 26) | ((sharing & 0xfff) << 14);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = index;
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        // Core level: `count` cores in the package.
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = 1 | (2 << 8);
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n & 0xff;
                    }
                }
            }
            LEAF_AMD_FEATURES => {
                if count > 1 {
                    e.ecx |= AMD_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !AMD_ECX_CMP_LEGACY;
                }
            }
            LEAF_AMD_SIZES => {
                // ECX[7:0]: cores - 1; ECX[15:12]: APIC ID bits for cores.
                e.ecx = (e.ecx & !0xf0ff) | ((count - 1) & 0xff) | (core_bits << 12);
            }
            LEAF_AMD_TOPOLOGY => {
                e.eax = index;
                e.ebx = index & 0xff; // compute unit = core, one thread each
                e.ecx = 0; // node 0, one node
            }
            _ => {}
        }
    }
    // KVM lists leaf 0xB sub-leaves 0 and 1 at most; a guest walks until a type of 0.
    for leaf in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        if out.iter().any(|e| e.function == leaf) && !out.iter().any(|e| e.function == leaf && e.index == 2) {
            out.push(CpuidEntry {
                function: leaf,
                index: 2,
                flags: virtkit_hypervisor::CPUID_FLAG_SIGNIFICANT_INDEX,
                ecx: 2,
                edx: index,
                ..Default::default()
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tsc_deadline_timer_bit_is_set_in_leaf_1_only() {
        let mut t = host_like();
        offer_tsc_deadline_timer(&mut t);
        for e in &t {
            let set = e.ecx & ECX_TSC_DEADLINE_TIMER != 0;
            assert_eq!(set, e.function == LEAF_FEATURES, "leaf {:#x}", e.function);
        }
    }
    use virtkit_hypervisor::CPUID_FLAG_SIGNIFICANT_INDEX;

    fn host_like() -> Vec<CpuidEntry> {
        let leaf = |function, index, eax, ebx, ecx, edx| CpuidEntry {
            function,
            index,
            flags: if function == 0xb || function == 4 {
                CPUID_FLAG_SIGNIFICANT_INDEX
            } else {
                0
            },
            eax,
            ebx,
            ecx,
            edx,
        };
        vec![
            leaf(0, 0, 0x1f, 0, 0, 0),
            // A host with APIC ID 7 and 16 logical CPUs, HTT set.
            leaf(1, 0, 0x806f8, 0x0710_0800, 0x7ffa_fbbf, 0xbfeb_fbff),
            leaf(4, 0, 0x1c00_4121, 0, 0, 0),
            leaf(4, 3, 0x1c00_4163, 0, 0, 0),
            leaf(0xb, 0, 1, 2, 0x100, 7),
            leaf(0xb, 1, 4, 16, 0x201, 7),
            leaf(0x8000_0008, 0, 0x3030, 0, 0x700f, 0),
            leaf(0x8000_001e, 0, 7, 0x103, 0, 0),
        ]
    }

    fn find(t: &[CpuidEntry], function: u32, index: u32) -> CpuidEntry {
        *t.iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn leaf_1_reports_apic_id_and_logical_count() {
        for (index, count) in [(0, 1), (1, 2), (3, 4), (254, 255)] {
            let t = vcpu_cpuid(&host_like(), index, count);
            let l1 = find(&t, 1, 0);
            assert_eq!(l1.ebx >> 24, index);
            assert_eq!((l1.ebx >> 16) & 0xff, count);
            assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
            assert_eq!(l1.edx & EDX_HTT != 0, count > 1);
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        }
    }

    #[test]
    fn leaf_b_describes_one_package_of_n_single_thread_cores() {
        let t = vcpu_cpuid(&host_like(), 3, 4);
        let smt = find(&t, 0xb, 0);
        let core = find(&t, 0xb, 1);
        let end = find(&t, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, (smt.ecx >> 8) & 0xff, smt.edx), (0, 1, 1, 3));
        assert_eq!(
            (core.eax, core.ebx, (core.ecx >> 8) & 0xff, core.edx),
            (2, 4, 2, 3)
        );
        assert_eq!((end.ecx >> 8) & 0xff, 0, "level type 0 ends the walk");
    }

    #[test]
    fn leaf_4_and_amd_leaves_agree_on_the_core_count() {
        let t = vcpu_cpuid(&host_like(), 1, 2);
        assert_eq!(find(&t, 4, 0).eax >> 26, 1);
        assert_eq!(find(&t, 4, 0).eax & 0x3ff, 0x121 & 0x3ff);
        assert_eq!(find(&t, 0x8000_0008, 0).ecx & 0xff, 1);
        assert_eq!((find(&t, 0x8000_0008, 0).ecx >> 12) & 0xf, 1);
        assert_eq!(find(&t, 0x8000_001e, 0).eax, 1);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 255].map(id_bits), [0, 1, 2, 2, 3, 8]);
    }
}
