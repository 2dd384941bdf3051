//! `completions` and `manpages` against the tools that read them (bash,
//! groff, zsh, fish), with `jogg-relay --help` as the oracle for which
//! subcommands and options exist.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::helpers::run_binary;

/// `name` found on the `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Says loudly (past the harness's capture) that a check did not run.
fn skipped(what: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {what} (the program is not installed)"
    );
}

/// The names of the subcommands `jogg-relay --help` lists, clap's own
/// `help` left out.
fn subcommands_in_help() -> Vec<String> {
    let (code, help, _) = run_binary(&["--help"], &[]);
    assert_eq!(code, 0);
    let names: Vec<String> = help
        .lines()
        .skip_while(|line| *line != "Commands:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(
        names.len() >= 10 && names.iter().any(|name| name == "serve"),
        "{help}"
    );
    names
}

/// The long options `jogg-relay SUBCOMMAND --help` lists (`--help` aside).
fn long_options_in_help(subcommand: &str) -> Vec<String> {
    let (code, help, _) = run_binary(&[subcommand, "--help"], &[]);
    assert_eq!(code, 0);
    help.lines()
        .skip_while(|line| *line != "Options:")
        .flat_map(str::split_whitespace)
        .filter(|word| word.starts_with("--"))
        .map(|word| word.trim_end_matches([',', '=']).to_owned())
        .filter(|option| option != "--help")
        .collect()
}

/// Writes `jogg-relay completions SHELL` into `dir` and returns its path.
fn completion_file(dir: &Path, shell: &str) -> PathBuf {
    let (code, script, stderr) = run_binary(&["completions", shell], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(script.contains("jogg-relay"), "{script}");
    let path = dir.join(format!("jogg-relay.{shell}"));
    std::fs::write(&path, script).unwrap();
    path
}

/// Runs `bash -c script` with the completion file as `$1`; (exit code,
/// stdout, stderr).
fn bash(script: &str, file: &Path) -> (i32, String, String) {
    let output = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", script, "bash"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// What bash's completion offers for `words` (the last one being
/// completed), by calling the function the sourced file registered for
/// `jogg-relay` the way bash's programmable completion does.
fn bash_completes(file: &Path, words: &[&str]) -> Vec<String> {
    let words: Vec<String> = words.iter().map(|word| format!("'{word}'")).collect();
    let script = format!(
        r#"source "$1" || exit 3
spec=$(complete -p jogg-relay) || exit 4
function=$(printf '%s\n' "$spec" | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
[ -n "$function" ] || {{ echo "no function in: $spec" >&2; exit 5; }}
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
"$function" jogg-relay "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        words = words.join(" ")
    );
    let (code, stdout, stderr) = bash(&script, file);
    assert_eq!(code, 0, "{stderr}");
    stdout
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completion_parses_and_completes_every_subcommand() {
    if on_path("bash").is_none() {
        return skipped("bash completion test");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = completion_file(dir.path(), "bash");
    let (code, _, stderr) = bash(r#"bash -n "$1""#, &file);
    assert_eq!(code, 0, "bash -n refused the completion script: {stderr}");

    let offered = bash_completes(&file, &["jogg-relay", ""]);
    for subcommand in subcommands_in_help() {
        assert!(
            offered.contains(&subcommand),
            "{subcommand} not offered: {offered:?}"
        );
    }
    assert_eq!(
        bash_completes(&file, &["jogg-relay", "export-r"]),
        ["export-renders"]
    );
    let options = bash_completes(&file, &["jogg-relay", "export-renders", "--"]);
    for option in long_options_in_help("export-renders") {
        assert!(
            options.contains(&option),
            "{option} not offered: {options:?}"
        );
    }
}

#[test]
fn zsh_and_fish_completions_parse_where_the_shell_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, check) in [("zsh", ["-n"]), ("fish", ["--no-execute"])] {
        let file = completion_file(dir.path(), shell);
        if on_path(shell).is_none() {
            skipped(&format!("{shell} -n on the {shell} completion script"));
            continue;
        }
        let output = Command::new(shell)
            .args(check)
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{shell} refused its completion script: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // fish can also be asked what it would complete, as bash is above.
    if on_path("fish").is_some() {
        let output = Command::new("fish")
            .arg("--no-config")
            .arg("-c")
            .arg(r#"source $argv[1]; complete -C "jogg-relay export-renders --""#)
            .arg(dir.path().join("jogg-relay.fish"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let offered = String::from_utf8_lossy(&output.stdout);
        for option in long_options_in_help("export-renders") {
            assert!(
                offered
                    .lines()
                    .any(|line| line.split('\t').next() == Some(&option)),
                "fish does not offer {option}: {offered}"
            );
        }
    }
}

/// `page` as groff renders it for a terminal: (text, warnings), lines
/// long enough that no name is hyphenated across two.
fn groff(page: &Path) -> (String, String) {
    // -k: run preconv first, as man does, so UTF-8 in help texts is read
    // as such; -ww: every warning.
    let output = Command::new("groff")
        .args(["-k", "-man", "-Tutf8", "-ww", "-rLL=400n", "-P-cbou"])
        .arg(page)
        .stdin(Stdio::null())
        .output()
        .expect("run groff");
    assert!(
        output.status.success(),
        "groff failed on {}",
        page.display()
    );
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn man_pages_render_without_warnings_and_cover_every_subcommand_and_option() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let (code, stdout, stderr) = run_binary(&["manpages", out.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{stderr}");

    let subcommands = subcommands_in_help();
    let mut expected: Vec<String> = std::iter::once("jogg-relay.1".to_owned())
        .chain(subcommands.iter().map(|sub| format!("jogg-relay-{sub}.1")))
        .collect();
    expected.sort();
    let mut written: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    assert_eq!(written, expected);
    assert_eq!(stdout.lines().count(), expected.len(), "{stdout}");

    if on_path("groff").is_none() {
        return skipped("rendering the man pages with groff");
    }
    let (main, warnings) = groff(&out.join("jogg-relay.1"));
    assert_eq!(warnings, "", "jogg-relay.1");
    for section in ["NAME", "SYNOPSIS", "SUBCOMMANDS", "EXIT STATUS", "FILES"] {
        assert!(
            main.lines().any(|line| line == section),
            "{section}: {main}"
        );
    }
    for sub in &subcommands {
        assert!(
            main.contains(&format!("jogg-relay-{sub}(1)")),
            "jogg-relay.1 does not name {sub}: {main}"
        );
        let (page, warnings) = groff(&out.join(format!("jogg-relay-{sub}.1")));
        assert_eq!(warnings, "", "jogg-relay-{sub}.1");
        assert!(
            page.contains(&format!("jogg-relay {sub}")),
            "jogg-relay-{sub}.1 has no synopsis: {page}"
        );
        for option in long_options_in_help(sub) {
            assert!(
                page.contains(&option),
                "jogg-relay-{sub}.1 lacks {option}: {page}"
            );
        }
    }
}

#[test]
fn completions_and_man_pages_need_no_configuration_and_refuse_bad_input() {
    // A configuration that every other command refuses with exit 64.
    let broken = [
        ("JOGG_RELAY_CONFIG", "/nonexistent/jogg-relay.toml"),
        ("JOGG_RELAY__JOGG__BURST", "lots"),
    ];
    let (code, script, stderr) = run_binary(&["completions", "bash"], &broken);
    assert_eq!(code, 0, "{stderr}");
    assert!(script.contains("complete -F"), "{script}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pages");
    let (code, _, stderr) = run_binary(&["manpages", out.to_str().unwrap()], &broken);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.join("jogg-relay.1").is_file());
    let (code, _, _) = run_binary(&["check-config"], &broken);
    assert_eq!(code, 64);

    let (code, _, stderr) = run_binary(&["completions", "tcsh"], &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("tcsh"), "{stderr}");

    // A file where the folder should be: exit 1, naming the path.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let (code, _, stderr) = run_binary(&["manpages", file.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(file.to_str().unwrap()), "{stderr}");
}
