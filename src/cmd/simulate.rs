use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tokentally_ingest::Fleet;

use crate::config::{Config, FleetArgs};

/// Write simulated fleet traffic as NDJSON: a seeded, deterministic mix of
/// real-looking models (Zipf-like popularity), log-normal token counts and
/// apps, with optional duplicates, late events and malformed lines. Pipe it
/// into `tokentally ingest --file -`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Output file, or - for standard output.
    #[arg(long, value_name = "PATH", default_value = "-")]
    pub out: PathBuf,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

pub fn run(mut config: Config, args: SimulateArgs) -> anyhow::Result<()> {
    config.apply_fleet(&args.fleet)?;
    let sink: Box<dyn Write> = if args.out.as_os_str() == "-" {
        Box::new(io::stdout().lock())
    } else {
        Box::new(
            File::create(&args.out)
                .with_context(|| format!("cannot create {}", args.out.display()))?,
        )
    };
    let mut out = BufWriter::with_capacity(1 << 20, sink);
    let mut fleet = Fleet::new(config.simulator);
    let mut line = Vec::with_capacity(512);
    while fleet.next_line(&mut line).is_some() {
        line.push(b'\n');
        match out.write_all(&line) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            r => r?,
        }
        line.clear();
    }
    match out.flush() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
