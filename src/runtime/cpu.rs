//! CPU lists (`0-3,6`), the CPUs this process may run on, and pinning a thread to one.

use std::io;

/// Parses a CPU list in the kernel's format: `0-3,6,8-9`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let range = match part.split_once('-') {
            Some((a, b)) => (parse_cpu(a)?, parse_cpu(b)?),
            None => (parse_cpu(part)?, parse_cpu(part)?),
        };
        if range.0 > range.1 {
            return Err(format!("`{part}` is a descending range"));
        }
        for cpu in range.0..=range.1 {
            if cpus.contains(&cpu) {
                return Err(format!("CPU {cpu} is listed twice"));
            }
            cpus.push(cpu);
        }
    }
    if cpus.is_empty() {
        return Err("the CPU list is empty".into());
    }
    Ok(cpus)
}

fn parse_cpu(text: &str) -> Result<usize, String> {
    let text = text.trim();
    text.parse::<usize>()
        .ok()
        .filter(|&cpu| cpu < libc::CPU_SETSIZE as usize)
        .ok_or_else(|| format!("`{text}` is not a CPU number"))
}

/// The CPUs this process is allowed to run on (its affinity mask, as `taskset` sets it).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set, and the
    // kernel writes at most size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            return (0..n).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// The CPUs the kernel has online (`/sys/devices/system/cpu/online`), any of
/// which may take interrupts; this process's own CPUs if that cannot be read.
pub fn online_cpus() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|text| parse_cpu_list(&text).ok())
        .unwrap_or_else(allowed_cpus)
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: as above; CPU_SET writes inside the set for cpu < CPU_SETSIZE,
    // which parse_cpu and allowed_cpus guarantee.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Renders a CPU list compactly: `0-3,6`.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_lists() {
        assert_eq!(parse_cpu_list("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpu_list(" 1 ").unwrap(), vec![1]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("0,0").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
        assert_eq!(format_cpu_list(&[6, 0, 1, 2, 3]), "0-3,6");
    }

    #[test]
    fn this_process_has_cpus() {
        assert!(!allowed_cpus().is_empty());
        let online = online_cpus();
        assert!(allowed_cpus().iter().all(|cpu| online.contains(cpu)));
    }
}
