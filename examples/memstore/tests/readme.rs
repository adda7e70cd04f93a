//! The README's walkthrough, run as written: every command of its ```sh
//! blocks, in order, in one bash session, against real `memstore` processes
//! (started by `scripts/local-cluster.sh`, as the README does).
//!
//! What the README says a command prints is checked:
//! * a trailing `# comment` on a command line is its whole output;
//! * a ```text block right after a ```sh block is the whole output of that
//!   block's last command;
//! * `...` in either stands for any text (indexes, leader ids, pids, the
//!   rest of a long output); trailing whitespace is ignored.
//!
//! Blocks fenced as ```sh skip-test are shown, not run (the build step).
//! Lines starting with `#` are comments. The test fails when a command exits
//! non-zero or prints something else.
//!
//! Isolation: the commands run in a temp dir holding a `scripts` link to the
//! repository's scripts, so `local-cluster/` and the nodes' data dirs are
//! created there; the README's ports 6006N and 800N (and the bases 60060 and
//! 8000) become free ports chosen at start (passed to the script as
//! RAFT_PORT_BASE and HTTP_PORT_BASE); `memstore` and `raftify-cli` are this
//! build's. Every command has a bounded time; every process is stopped at
//! the end, through the script's pid files and then the session's process
//! group.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The longest a single README command may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// One command of the walkthrough.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    /// 1-based line in README.md.
    line: usize,
    command: String,
    expected: Option<String>,
}

/// The lines of the section whose heading starts with `## Walkthrough`, up
/// to the next `## ` heading, with their 1-based line numbers.
fn walkthrough_section(readme: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut inside = false;
    for (i, line) in readme.lines().enumerate() {
        if line.starts_with("## ") {
            inside = line.starts_with("## Walkthrough");
            continue;
        }
        if inside {
            out.push((i + 1, line));
        }
    }
    out
}

/// Splits `line` at its trailing comment: a `#` outside quotes that follows
/// whitespace. Returns the command and the comment's text.
fn split_comment(line: &str) -> (&str, Option<&str>) {
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut prev_space = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev_space => {
                return (line[..i].trim_end(), Some(line[i + 1..].trim()));
            }
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    (line.trim_end(), None)
}

/// The walkthrough's steps (see the module docs for the rules).
fn parse_steps(readme: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    // Where a ```text block may give the output of the step just before it.
    let mut output_of: Option<usize> = None;
    let mut lines = walkthrough_section(readme).into_iter();
    while let Some((n, line)) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            if !line.trim().is_empty() {
                output_of = None;
            }
            continue;
        };
        let body: Vec<(usize, &str)> = lines
            .by_ref()
            .take_while(|(_, l)| !l.trim_start().starts_with("```"))
            .collect();
        match info.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["sh"] => {
                let first = steps.len();
                let mut pending: Option<(usize, String)> = None;
                for (m, l) in body {
                    let (start, mut text) = pending.take().unwrap_or((m, String::new()));
                    text.push_str(l);
                    if text.ends_with('\\') {
                        pending = Some((start, format!("{text}\n")));
                        continue;
                    }
                    if text.trim().is_empty() || text.trim_start().starts_with('#') {
                        continue;
                    }
                    let (command, comment) = split_comment(&text);
                    steps.push(Step {
                        line: start,
                        command: command.to_string(),
                        expected: comment.map(str::to_string),
                    });
                }
                assert!(pending.is_none(), "README.md:{n}: a block ends in a `\\`");
                output_of = (steps.len() > first).then(|| steps.len() - 1);
            }
            ["sh", "skip-test"] => output_of = None,
            ["text"] => {
                let i = output_of
                    .take()
                    .unwrap_or_else(|| panic!("README.md:{n}: a text block follows no commands"));
                assert!(
                    steps[i].expected.is_none(),
                    "README.md:{}: a command with a trailing comment and a text block",
                    steps[i].line
                );
                let text: Vec<&str> = body.iter().map(|(_, l)| *l).collect();
                steps[i].expected = Some(text.join("\n"));
            }
            other => panic!("README.md:{n}: the walkthrough has a ```{other:?} block: use sh, sh skip-test or text"),
        }
    }
    steps
}

/// Whether `text` matches `pattern`, where `...` matches any text (also
/// across lines) and everything else matches itself; trailing whitespace of
/// every line and of the whole is ignored.
fn matches(pattern: &str, text: &str) -> bool {
    let norm = |s: &str| {
        s.lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n")
            .trim_end()
            .to_string()
    };
    let (pattern, text) = (norm(pattern), norm(text));
    let parts: Vec<&str> = pattern.split("...").collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return text == first;
    }
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Replaces the README's ports (6006N, 800N) and port bases (60060, 8000),
/// as whole numbers, with the test's.
fn with_ports(s: &str, raft_base: u16, http_base: u16) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.char_indices().peekable();
    let mut prev_alnum = false;
    while let Some((i, c)) = chars.next() {
        if !c.is_ascii_digit() || prev_alnum {
            prev_alnum = c.is_ascii_alphanumeric();
            out.push(c);
            continue;
        }
        let mut end = i + 1;
        while let Some((j, d)) = chars.peek().copied() {
            if !d.is_ascii_digit() {
                break;
            }
            end = j + 1;
            chars.next();
        }
        let number = &s[i..end];
        let mapped = match number.parse::<u32>() {
            Ok(n @ 60060..=60069) => Some(u32::from(raft_base) + n - 60060),
            Ok(n @ 8000..=8009) => Some(u32::from(http_base) + n - 8000),
            _ => None,
        };
        match mapped {
            Some(port) => out.push_str(&port.to_string()),
            None => out.push_str(number),
        }
        prev_alnum = true;
    }
    out
}

/// A base port B with B+1..=B+`n` free, held bound (in `held`) until the
/// caller lets them go, so two ranges never overlap. Chosen below the
/// kernel's ephemeral range when it is known: the ports stay free for the
/// seconds until a node binds them, since neither outgoing connections nor
/// other tests' port-0 binds are given ports there.
fn free_range(n: u16, held: &mut Vec<TcpListener>) -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|low| *low > 20_000);
    let seed = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        std::process::id(),
    );
    for attempt in 0..200u64 {
        let base = match ephemeral_low {
            Some(low) => {
                let span = u64::from(low - 10_000 - n);
                10_000 + (seed.wrapping_add(attempt.wrapping_mul(7919)) % span) as u16
            }
            None => common::free_port().saturating_sub(1),
        };
        if base.checked_add(n).is_none() {
            continue;
        }
        let bound: Result<Vec<_>, _> = (1..=n)
            .map(|k| TcpListener::bind(("127.0.0.1", base + k)))
            .collect();
        if let Ok(listeners) = bound {
            held.extend(listeners);
            return base;
        }
    }
    panic!("no range of {n} free ports found on 127.0.0.1");
}

/// `bash` in `cwd` with `env`, and nothing from the developer's shell that
/// would change what the README's commands do (a RAFTIFY_* flag, another
/// LOCAL_CLUSTER_DIR, whose nodes `stop` would stop).
fn bash_in(cwd: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("RAFTIFY_")
            || [
                "LOCAL_CLUSTER_DIR",
                "LOCAL_CLUSTER_TIMEOUT",
                "CARGO_TARGET_DIR",
            ]
            .contains(&key.as_str())
        {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// The bash session the README's commands run in, and the cleanup of all it
/// started.
struct Session {
    bash: Child,
    stdin: ChildStdin,
    /// The working directory (a temp dir's subdir, as the repository root).
    cwd: PathBuf,
    /// Where each command's stdout, stderr and exit status go.
    io: PathBuf,
    env: Vec<(String, String)>,
    _tmp: tempfile::TempDir,
}

impl Session {
    fn start(repo: &Path, raft_base: u16, http_base: u16) -> Session {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cwd = tmp.path().join("repo");
        let io = tmp.path().join("io");
        std::fs::create_dir_all(&cwd).expect("mkdir");
        std::fs::create_dir_all(&io).expect("mkdir");
        std::os::unix::fs::symlink(repo.join("scripts"), cwd.join("scripts")).expect("symlink");
        let memstore = Path::new(env!("CARGO_BIN_EXE_memstore"));
        let cli = common::cli_path();
        let bin_dir = memstore.parent().expect("bin dir");
        assert_eq!(cli.parent(), Some(bin_dir), "raftify-cli next to memstore");
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let env = vec![
            ("PATH".to_string(), path),
            ("MEMSTORE_BIN".to_string(), memstore.display().to_string()),
            ("RAFT_PORT_BASE".to_string(), raft_base.to_string()),
            ("HTTP_PORT_BASE".to_string(), http_base.to_string()),
        ];
        let mut bash = bash_in(&cwd, &env)
            .args(["--noprofile", "--norc", "-s"])
            .stdin(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn bash");
        let stdin = bash.stdin.take().expect("bash stdin");
        Session {
            bash,
            stdin,
            cwd,
            io,
            env,
            _tmp: tmp,
        }
    }

    /// Runs one command in the session; its exit status, stdout and stderr.
    fn run(&mut self, i: usize, command: &str) -> Result<(i32, String, String), String> {
        let (out, err, rc) = (
            self.io.join(format!("{i}.out")),
            self.io.join(format!("{i}.err")),
            self.io.join(format!("{i}.rc")),
        );
        let script = format!(
            "{{ {command}\n}} >'{out}' 2>'{err}' </dev/null; echo $? >'{rc}.tmp'; mv '{rc}.tmp' '{rc}'\n",
            out = out.display(),
            err = err.display(),
            rc = rc.display(),
        );
        self.stdin
            .write_all(script.as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("cannot write to bash: {e}"))?;
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&rc) {
                let code = text
                    .trim()
                    .parse()
                    .map_err(|_| format!("exit status {text:?}"))?;
                return Ok((code, read(&out), read(&err)));
            }
            if let Ok(Some(status)) = self.bash.try_wait() {
                return Err(format!("bash exited ({status}); stderr: {}", read(&err)));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no exit within {STEP_TIMEOUT:?}; stdout so far: {}; stderr: {}",
                    read(&out),
                    read(&err)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end of every node log under local-cluster/, for failure reports.
    fn node_logs(&self) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.cwd.join("local-cluster"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        let mut out = String::new();
        for p in logs {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {} (end)\n", p.display()));
            for l in tail.iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The script's own stop (SIGTERM by pid file, bounded, then SIGKILL).
        let _ = bash_in(&self.cwd, &self.env)
            .args(["scripts/local-cluster.sh", "stop"])
            .env("LOCAL_CLUSTER_TIMEOUT", "5")
            .status();
        // Whatever is left in the session's process group (all started here).
        unsafe {
            libc::kill(-(self.bash.id() as i32), libc::SIGKILL);
        }
        let _ = self.bash.wait();
    }
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let started = Instant::now();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(repo.join("README.md")).expect("read README.md");
    let steps = parse_steps(&readme);
    for needed in [
        "local-cluster.sh start",
        "local-cluster.sh kill $LEADER",
        "local-cluster.sh restart $LEADER",
        "local-cluster.sh join 5 --join-as-learner",
        "/cluster/voters",
        "--restore-wal-from",
        "raftify-cli debug persisted",
        "raftify-cli members",
        "raftify-cli debug node",
    ] {
        assert!(
            steps.iter().any(|s| s.command.contains(needed)),
            "the README walkthrough no longer runs {needed:?}"
        );
    }

    let mut held = Vec::new();
    let raft_base = free_range(5, &mut held);
    let http_base = free_range(5, &mut held);
    let mut session = Session::start(&repo, raft_base, http_base);
    drop(held);

    for (i, step) in steps.iter().enumerate() {
        let command = with_ports(&step.command, raft_base, http_base);
        let expected = step
            .expected
            .as_deref()
            .map(|e| with_ports(e, raft_base, http_base));
        let outcome = session.run(i, &command);
        let failure = match &outcome {
            Err(e) => Some(e.clone()),
            Ok((code, _, _)) if *code != 0 => Some(format!("exit status {code}")),
            Ok((_, out, _)) => match &expected {
                Some(e) if !matches(e, out) => Some(format!("expected:\n{e}")),
                _ => None,
            },
        };
        if let Some(why) = failure {
            let (out, err) = match outcome {
                Ok((_, out, err)) => (out, err),
                Err(_) => Default::default(),
            };
            panic!(
                "README.md:{} `{}` (run as `{command}`): {why}\nstdout:\n{out}\nstderr:\n{err}\n{}",
                step.line,
                step.command,
                session.node_logs()
            );
        }
    }
    drop(session);
    eprintln!("{} README commands in {:?}", steps.len(), started.elapsed());
}

#[test]
fn the_walkthrough_parser_reads_commands_outputs_and_wildcards() {
    let readme = "# x\n```sh\nnot run\n```\n## Walkthrough\n\
        ```sh skip-test\ncargo build\n```\n\
        ```sh\n# a comment\nA=$(echo '# no' | tr -d x)   # # no\nfoo \\\n  bar\necho done\n```\n\n\
        ```text\ndone\n...\n```\n## Next\n```sh\nnot run\n```\n";
    let steps = parse_steps(readme);
    let got: Vec<(&str, Option<&str>)> = steps
        .iter()
        .map(|s| (s.command.as_str(), s.expected.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("A=$(echo '# no' | tr -d x)", Some("# no")),
            ("foo \\\n  bar", None),
            ("echo done", Some("done\n...")),
        ]
    );
    assert_eq!(steps[1].line, 12);

    assert!(matches("{\"index\":...}", "{\"index\":3}"));
    assert!(matches("a...b...c", "a-b-b-c\n"));
    assert!(matches("node ... leads", "node 2 leads"));
    assert!(!matches("a...b", "ba"));
    assert!(!matches("ab...ba", "aba"));
    assert!(!matches("world", "world2"));
    assert!(matches("line  \nnext", "line\nnext  \n"));

    assert_eq!(
        with_ports(
            "localhost:8001 127.0.0.1:60065 $(( 8000 + N )) 80010 a8001",
            41000,
            42000
        ),
        "localhost:42001 127.0.0.1:41005 $(( 42000 + N )) 80010 a8001"
    );
}
