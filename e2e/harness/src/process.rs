//! Running external programs with clear errors and bounded waits: never a silent hang.

use std::{
    io::ErrorKind,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Describes a command for messages: the program and its arguments.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs with inherited stdio, failing if the command fails or outlives `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<()> {
    let status = wait_bounded(cmd, timeout)?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs with captured output and returns stdout; the error carries stderr.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let out = output_unchecked(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", describe(cmd)))
}

/// Runs with captured output, whatever its exit status.
pub fn output_unchecked(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(cmd)?;
    // Drain pipes on threads so a chatty child cannot block on a full pipe while we wait.
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let status = wait_child(cmd, &mut child, timeout)?;
    let collect =
        |h: Option<thread::JoinHandle<Vec<u8>>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok(Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

fn drain(mut pipe: impl std::io::Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

fn wait_bounded(cmd: &mut Command, timeout: Duration) -> Result<std::process::ExitStatus> {
    let mut child = spawn(cmd)?;
    wait_child(cmd, &mut child, timeout)
}

/// Starts `cmd`, turning "not found" into a message that names the missing program.
pub fn spawn(cmd: &mut Command) -> Result<std::process::Child> {
    cmd.spawn().map_err(|error| {
        let program = cmd.get_program().to_string_lossy().into_owned();
        if error.kind() == ErrorKind::NotFound {
            anyhow::anyhow!("`{program}` was not found: install it or put it on PATH")
        } else {
            anyhow::anyhow!("cannot start `{}`: {error}", describe(cmd))
        }
    })
}

fn wait_child(
    cmd: &Command,
    child: &mut std::process::Child,
    timeout: Duration,
) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{}` did not finish within {}s and was stopped",
                describe(cmd),
                timeout.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `done` every 100 ms until it holds; fails after `limit`, saying what it waited for.
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done()? {
        if Instant::now() >= deadline {
            bail!("timed out after {} s waiting for {what}", limit.as_secs());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Builds `packages` of this workspace (`--release` or the dev profile) and returns the
/// directory holding their binaries.
pub fn cargo_build(release: bool, packages: &[&str]) -> Result<std::path::PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(crate::paths::repo_root())
        .args(["build", "--quiet"]);
    if release {
        build.arg("--release");
    }
    for package in packages {
        build.args(["--package", package]);
    }
    run(&mut build, Duration::from_secs(1800))?;
    let profile = if release { "release" } else { "debug" };
    Ok(crate::paths::target_dir().join(profile))
}

/// Starts `cmd` with its output appended to nothing but the file `log` (created afresh),
/// and no input.
pub fn spawn_logged(cmd: &mut Command, log: &std::path::Path) -> Result<std::process::Child> {
    let file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    spawn(cmd)
}

/// Processes started together and stopped together: when the group is dropped (also on
/// an error), each gets SIGTERM and, after `grace`, SIGKILL, the last started first.
#[derive(Debug)]
pub struct Group {
    children: Vec<(&'static str, std::process::Child)>,
    grace: Duration,
}

impl Group {
    pub fn new(grace: Duration) -> Self {
        Self {
            children: Vec::new(),
            grace,
        }
    }

    /// Starts `cmd` as `name`, its output in `log`; returns its pid.
    pub fn spawn(
        &mut self,
        name: &'static str,
        cmd: &mut Command,
        log: &std::path::Path,
    ) -> Result<u32> {
        let child = spawn_logged(cmd, log)?;
        let pid = child.id();
        self.children.push((name, child));
        Ok(pid)
    }

    /// Fails, naming it, when a process of the group has exited.
    pub fn check_running(&mut self) -> Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited ({status})");
            }
        }
        Ok(())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for (name, child) in self.children.iter_mut().rev() {
            if !terminate(child, self.grace).unwrap_or(false) {
                eprintln!(
                    "{name} did not stop within {} s; it was killed",
                    self.grace.as_secs()
                );
            }
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `probe` every 100 ms until it yields a value; fails after `limit`, saying what it
/// waited for.
pub fn wait_until_value<T>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {} s waiting for {what}", limit.as_secs());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Asks a child to stop with SIGTERM and waits up to `grace`; then kills it. Returns
/// whether it stopped by itself.
pub fn terminate(child: &mut std::process::Child, grace: Duration) -> Result<bool> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
    // It may have exited already; waiting below tells.
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let stopped = wait_until("the process to exit", grace, || {
        Ok(child.try_wait()?.is_some())
    });
    if stopped.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(stopped.is_ok())
}

/// Stops (SIGTERM, then SIGKILL after 30 s) a background process whose pid `pid_file`
/// holds, if it still runs `program`: the pid may have been reused since. Removes the file.
/// Returns whether one was stopped.
pub fn stop_detached(pid_file: &std::path::Path, program: &str) -> Result<bool> {
    stop_detached_within(pid_file, program, Duration::from_secs(30))
}

/// [`stop_detached`] with its own grace period before SIGKILL.
pub fn stop_detached_within(
    pid_file: &std::path::Path,
    program: &str,
    grace: Duration,
) -> Result<bool> {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return Ok(false);
    };
    let _ = std::fs::remove_file(pid_file);
    let Ok(raw) = text.trim().parse::<i32>() else {
        return Ok(false);
    };
    let cmdline = std::fs::read_to_string(format!("/proc/{raw}/cmdline")).unwrap_or_default();
    if !cmdline.contains(program) {
        return Ok(false);
    }
    let pid = nix::unistd::Pid::from_raw(raw);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .with_context(|| format!("cannot signal {program} (pid {raw})"))?;
    let gone = || Ok(!std::path::Path::new(&format!("/proc/{raw}")).exists());
    if wait_until(&format!("{program} to exit"), grace, gone).is_err() {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    println!("Stopped {program} (pid {raw}).");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_stdout() {
        let out = output(
            Command::new("sh").args(["-c", "echo hello"]),
            Duration::from_secs(10),
        );
        assert_eq!(out.expect("runs").trim(), "hello");
    }

    #[test]
    fn failure_carries_stderr() {
        let error = output(
            Command::new("sh").args(["-c", "echo broken >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .expect_err("fails");
        let message = error.to_string();
        assert!(
            message.contains("broken") && message.contains("exit status: 3"),
            "{message}"
        );
    }

    #[test]
    fn missing_program_is_named() {
        let error = run(
            &mut Command::new("no-such-program-pixel"),
            Duration::from_secs(10),
        )
        .expect_err("missing");
        assert!(
            error
                .to_string()
                .contains("`no-such-program-pixel` was not found"),
            "{error}"
        );
    }

    #[test]
    fn overrunning_command_is_stopped() {
        let error = run(Command::new("sleep").arg("30"), Duration::from_millis(300))
            .expect_err("times out");
        assert!(
            error.to_string().contains("did not finish within"),
            "{error}"
        );
    }
}
