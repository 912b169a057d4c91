//! What hardware the worker offers: detected, then overridden by flags.
//!
//! CPU cores (logical, as Docker's `nano_cpus` counts them) and RAM come from `sysinfo`; GPUs
//! from NVML, which `nvml-wrapper` loads at run time (`libnvidia-ml.so.1`). Where the NVIDIA
//! library or driver is absent — most machines, and CI — the worker logs one line and offers no
//! GPU. Each figure can be overridden, to reserve capacity for other work or, in tests, to
//! offer a GPU that does not exist.

use gyoza_core::{Gpu, Resources};

/// Figures that replace detected ones.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// CPU cores.
    pub cpu_cores: Option<u32>,
    /// RAM in MB.
    pub ram_mb: Option<u64>,
    /// GPUs; when non-empty, NVML is not consulted at all.
    pub gpus: Vec<Gpu>,
}

/// The resources to offer: detection, with `overrides` applied.
pub fn detect(overrides: &Overrides) -> Resources {
    let (cpu_cores, ram_mb) = match (overrides.cpu_cores, overrides.ram_mb) {
        (Some(cpu), Some(ram)) => (cpu, ram),
        (cpu, ram) => {
            let (detected_cpu, detected_ram) = detect_cpu_and_ram();
            (cpu.unwrap_or(detected_cpu), ram.unwrap_or(detected_ram))
        }
    };
    let gpus = if overrides.gpus.is_empty() {
        detect_gpus()
    } else {
        overrides.gpus.clone()
    };
    Resources {
        cpu_cores,
        ram_mb,
        gpus,
    }
}

fn detect_cpu_and_ram() -> (u32, u64) {
    use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
    let system = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing())
            .with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    let cpus = u32::try_from(system.cpus().len())
        .unwrap_or(u32::MAX)
        .max(1);
    // Inside a container the cgroup limit, not the host's RAM, is what the worker can use.
    let bytes = system
        .cgroup_limits()
        .map(|limits| limits.total_memory)
        .filter(|limit| *limit > 0)
        .map_or(system.total_memory(), |limit| {
            limit.min(system.total_memory())
        });
    (cpus, bytes / (1024 * 1024))
}

/// GPUs reported by NVML, or none (with one log line) when NVML cannot be used.
fn detect_gpus() -> Vec<Gpu> {
    use nvml_wrapper::Nvml;
    // Distributions ship the versioned name; the unversioned one needs the -dev package.
    let nvml = Nvml::builder()
        .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
        .init()
        .or_else(|_| Nvml::init());
    let nvml = match nvml {
        Ok(nvml) => nvml,
        Err(e) => {
            tracing::info!(reason = %e, "NVML is not available: offering no GPU (use --gpu to declare GPUs by hand)");
            return Vec::new();
        }
    };
    let count = match nvml.device_count() {
        Ok(count) => count,
        Err(e) => {
            tracing::warn!(error = %e, "NVML loaded but cannot count GPUs: offering none");
            return Vec::new();
        }
    };
    let mut gpus = Vec::new();
    for index in 0..count {
        let device = match nvml.device_by_index(index) {
            Ok(device) => device,
            Err(e) => {
                tracing::warn!(index, error = %e, "cannot open GPU; skipped");
                continue;
            }
        };
        let memory = match device.memory_info() {
            Ok(memory) => memory,
            Err(e) => {
                tracing::warn!(index, error = %e, "cannot read GPU memory; skipped");
                continue;
            }
        };
        let name = device.name().unwrap_or_else(|_| "unknown".into());
        tracing::info!(
            index,
            name = %name,
            total_mb = memory.total / (1024 * 1024),
            free_mb = memory.free / (1024 * 1024),
            "GPU detected"
        );
        gpus.push(Gpu {
            id: index,
            vram_mb: memory.total / (1024 * 1024),
            tags: vec!["nvidia".into(), name_tag(&name)],
        });
    }
    gpus
}

/// `NVIDIA A100-SXM4-40GB` → `nvidia-a100-sxm4-40gb`: a tag a definition can ask for.
fn name_tag(name: &str) -> String {
    let tag: String = name
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let tag = tag.trim_matches('-').to_owned();
    if tag.starts_with("nvidia") {
        tag
    } else {
        format!("nvidia-{tag}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_detection() {
        let gpu = Gpu {
            id: 3,
            vram_mb: 1000,
            tags: vec!["fake".into()],
        };
        let resources = detect(&Overrides {
            cpu_cores: Some(7),
            ram_mb: Some(1234),
            gpus: vec![gpu.clone()],
        });
        assert_eq!(resources.cpu_cores, 7);
        assert_eq!(resources.ram_mb, 1234);
        assert_eq!(resources.gpus, vec![gpu]);
    }

    #[test]
    fn detection_without_nvml_offers_cpus_ram_and_no_gpu() {
        // No NVIDIA library on the machines this runs on: detection must not fail or panic.
        let resources = detect(&Overrides::default());
        assert!(resources.cpu_cores >= 1);
        assert!(resources.ram_mb > 0);
        if std::path::Path::new("/dev/nvidiactl").exists() {
            return;
        }
        assert!(resources.gpus.is_empty());
    }

    #[test]
    fn gpu_names_become_tags() {
        assert_eq!(name_tag("NVIDIA A100-SXM4-40GB"), "nvidia-a100-sxm4-40gb");
        assert_eq!(name_tag("Tesla T4"), "nvidia-tesla-t4");
    }
}
