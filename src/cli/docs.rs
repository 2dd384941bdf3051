//! What the command line says about itself, generated from its clap
//! definition so it can never disagree with the parser: shell completions
//! (`jogg-relay completions SHELL`) and the manual pages (`jogg-relay
//! manpages DIR`), which the Debian package ships (README, "Install on
//! Debian/Ubuntu"). Neither reads the configuration: they work on a
//! machine that has none, such as a package build.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{CommandFactory as _, Subcommand};
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

use super::{Cli, CliError};

/// The name the pages and the completions are written for: the installed
/// binary's.
const BIN_NAME: &str = "jogg-relay";

/// The commands that describe the command line itself.
#[derive(Debug, Subcommand)]
pub enum DocsCommand {
    /// Print a shell completion script to standard output (bash, zsh,
    /// fish, elvish, powershell). For bash: `jogg-relay completions bash >
    /// ~/.local/share/bash-completion/completions/jogg-relay`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write the manual pages, jogg-relay.1 and one page per subcommand
    /// (jogg-relay-serve.1, …), into DIR (created if missing); prints each
    /// file written.
    Manpages {
        /// The folder to write the pages into.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// How generating failed: only writing can.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    /// A page or the folder could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl DocsCommand {
    /// Runs the command; no configuration, no runtime.
    pub fn run(&self) -> Result<(), CliError> {
        match self {
            DocsCommand::Completions { shell } => {
                // Rendered in memory first: clap_complete panics on a write
                // error, and `completions bash | head` must not.
                let _ = std::io::stdout().lock().write_all(&completions(*shell));
                Ok(())
            }
            DocsCommand::Manpages { dir } => {
                for path in write_manpages(dir).map_err(anyhow::Error::from)? {
                    let _ = writeln!(std::io::stdout().lock(), "{}", path.display());
                }
                Ok(())
            }
        }
    }
}

/// The completion script for `shell`, for the binary named `jogg-relay`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN_NAME, &mut script);
    if shell == Shell::Bash {
        // clap_complete's bash script tracks the subcommand typed so far as
        // `jogg__relay__subcmd__list` but labels the subcommands' cases
        // `jogg__subcmd__relay__subcmd__list` (it escapes the hyphen in the
        // binary's name twice, clap-rs/clap#6421), so nothing after a
        // subcommand completed. The labels are respelled the loop's way.
        let broken = BIN_NAME.replace('-', "__subcmd__");
        let tracked = BIN_NAME.replace('-', "__");
        script = String::from_utf8_lossy(&script)
            .replace(&broken, &tracked)
            .into_bytes();
    }
    script
}

/// Writes `jogg-relay.1` and `jogg-relay-<subcommand>.1` for every
/// subcommand `--help` lists into `dir`, and returns their paths.
#[tracing::instrument(skip_all, fields(dir = %dir.display()))]
pub fn write_manpages(dir: &Path) -> Result<Vec<PathBuf>, DocsError> {
    std::fs::create_dir_all(dir).map_err(|source| DocsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::new();
    for (name, page) in manpages() {
        let path = dir.join(name);
        std::fs::write(&path, page).map_err(|source| DocsError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Every page as (file name, roff text): the command's first, then one
/// per visible subcommand in `--help`'s order.
pub fn manpages() -> Vec<(String, Vec<u8>)> {
    // `help` is clap's own subcommand, not ours; built, so that each
    // subcommand knows its display name (`jogg-relay-serve`) and inherits
    // the global `--config`.
    let mut command = Cli::command()
        .bin_name(BIN_NAME)
        .disable_help_subcommand(true);
    command.build();
    let subcommands: Vec<clap::Command> = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .cloned()
        .collect();
    let names: Vec<String> = subcommands
        .iter()
        .map(|sub| page_name(sub).to_owned())
        .collect();

    // Every page's footer names the program and its version, as the
    // main page's does by default (a subcommand's would say only `serve`).
    let source = format!("{BIN_NAME} {}", command.get_version().unwrap_or_default());
    let mut pages = vec![render(
        Man::new(command.clone()).source(&source),
        &main_page_sections(&names),
    )];
    for sub in subcommands {
        let see_also = Roff::new()
            .control("SH", ["SEE ALSO"])
            .text([bold(BIN_NAME), roman("(1)")])
            .to_roff();
        pages.push(render(Man::new(sub).source(&source), &see_also));
    }
    pages
}

/// The page's title: `jogg-relay-serve` for `serve`.
fn page_name(sub: &clap::Command) -> &str {
    sub.get_display_name().unwrap_or_else(|| sub.get_name())
}

/// The page clap_mangen draws (name, synopsis, description, options,
/// subcommands, version) followed by `extra`.
fn render(man: Man, extra: &str) -> (String, Vec<u8>) {
    let mut page = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = man.render(&mut page);
    page.extend_from_slice(extra.as_bytes());
    (man.get_filename(), page)
}

/// The main page's sections beyond the command line itself: what an
/// operator looks up in a manual (exit codes, environment, files).
fn main_page_sections(subcommand_pages: &[String]) -> String {
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in [
        (
            "0",
            "success, or a clean shutdown of serve on SIGTERM or SIGINT",
        ),
        (
            "64",
            "bad usage or an invalid configuration; the message names the configuration key",
        ),
        ("1", "any other fatal error"),
    ] {
        roff.control("TP", [])
            .text([bold(code)])
            .text([roman(meaning)]);
    }

    roff.control("SH", ["ENVIRONMENT"]);
    for (name, meaning) in [
        ("JOGG_RELAY_CONFIG", "the configuration file, as --config"),
        (
            "JOGG_RELAY__SECTION__KEY",
            "overrides one configuration key, e.g. JOGG_RELAY__JOGG__REQUESTS_PER_SECOND=5",
        ),
        (
            "CREDENTIALS_DIRECTORY",
            "set by systemd's LoadCredential=: relative *_file paths (jogg.api_key_file, \
             server.token_file, callbacks.secret_file, database.url_file) are read from it",
        ),
        ("RUST_LOG", "the log filter (default warn,jogg_relay=info)"),
    ] {
        roff.control("TP", [])
            .text([bold(name)])
            .text([roman(meaning)]);
    }

    roff.control("SH", ["FILES"]);
    for (path, meaning) in [
        (
            "/etc/jogg-relay/config.toml",
            "the configuration the packaged service reads",
        ),
        (
            "/etc/jogg-relay/credentials/",
            "the secrets the service receives as credentials (jogg-api-key, api-token, \
             webhook-secret), readable by root only",
        ),
        (
            "/var/lib/jogg-relay/jogg-relay.db",
            "the SQLite database of the packaged service",
        ),
        (
            "/usr/share/doc/jogg-relay/",
            "the README (every configuration key, the HTTP API, the callbacks) and README.Debian",
        ),
    ] {
        roff.control("TP", [])
            .text([italic(path)])
            .text([roman(meaning)]);
    }

    roff.control("SH", ["SEE ALSO"]);
    let mut references = Vec::new();
    for name in subcommand_pages {
        references.push(bold(name.as_str()));
        references.push(roman("(1), "));
    }
    references.push(bold("systemd.exec"));
    references.push(roman("(5), "));
    references.push(bold("systemd-creds"));
    references.push(roman("(1)"));
    roff.text(references);
    roff.to_roff()
}
