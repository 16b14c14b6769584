//! `tradeshard dlq`: a consumer group's dead letters in a data directory: list them, send them
//! back to the group (replay: delivered to it alone, as a first attempt), or drop them; all of
//! the group's, or the one named by `--id partition:offset`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Serialize;
use tradeshard_engine::{DeadLetter, Engine, MessageId, Options};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The data directory (an engine must not have it open).
    #[arg(long)]
    dir: PathBuf,
    /// The consumer group whose dead letters these are.
    #[arg(long)]
    group: String,
    /// list, replay or drop.
    #[arg(value_parser = ["list", "replay", "drop"])]
    action: String,
    /// Only this dead letter (`partition:offset`, as `list` shows it).
    #[arg(long)]
    id: Option<MessageId>,
    /// Print one JSON object a line.
    #[arg(long)]
    json: bool,
}

/// One dead letter as `list` prints it.
#[derive(Serialize)]
struct Listed<'a> {
    id: String,
    topic: &'a str,
    key: String,
    payload_bytes: usize,
    attempts: u8,
    dead_since_ms: u64,
    last_delivered_at: u64,
}

impl<'a> Listed<'a> {
    fn of(letter: &'a DeadLetter) -> Listed<'a> {
        let entry = &letter.entry;
        Listed {
            id: letter.id.to_string(),
            topic: &entry.body.topic,
            key: String::from_utf8_lossy(&entry.body.key).into_owned(),
            payload_bytes: entry.body.payload.len(),
            attempts: entry.attempts,
            dead_since_ms: entry.at_ms,
            last_delivered_at: entry.origin,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.dir.join("MANIFEST").is_file() {
        bail!("{} is not a tradeshard data directory (no MANIFEST)", args.dir.display());
    }
    let engine = Engine::open(Options::new(&args.dir)).with_context(|| format!("opening {}", args.dir.display()))?;
    let handle = engine.handle();
    let mut letters = handle.dead_letters_blocking(&args.group)?;
    if let Some(id) = args.id {
        letters.retain(|letter| letter.id == id);
        if letters.is_empty() {
            bail!("group {} has no dead letter {id}", args.group);
        }
    }
    match args.action.as_str() {
        "list" => {
            for letter in &letters {
                let listed = Listed::of(letter);
                match args.json {
                    true => println!("{}", serde_json::to_string(&listed)?),
                    false => println!(
                        "{:>16}  {:<20} key={:<24} {:>7} B  attempts={:<3} dead since {} ms",
                        listed.id,
                        listed.topic,
                        listed.key,
                        listed.payload_bytes,
                        listed.attempts,
                        listed.dead_since_ms
                    ),
                }
            }
            eprintln!("dlq: {} dead letters of group {}", letters.len(), args.group);
        }
        action => {
            let replay = action == "replay";
            for (done, letter) in letters.iter().enumerate() {
                handle.end_dead_letter_blocking(&args.group, letter.id, replay)?;
                if (done + 1) % 10_000 == 0 {
                    eprintln!("dlq: {action}: {} of {}", done + 1, letters.len());
                }
            }
            eprintln!("dlq: {action}: {} dead letters of group {}", letters.len(), args.group);
        }
    }
    engine.close().context("closing the engine")?;
    Ok(())
}
