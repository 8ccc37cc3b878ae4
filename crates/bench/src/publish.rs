//! `publish`: what a processor's publishing step costs, with and without a transaction.
//!
//! A group member polls one small entry per batch from an input topic, then publishes `batch`
//! state-sized messages to an output topic together with the offset of what it polled: either
//! as one transaction through its `Publisher` (what the processor does), or as a plain append
//! followed by a plain offset commit (what it did before transactions). Only the publishing is
//! timed; no store is involved.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use tenantsync_log::{Cleanup, Message, Output, TopicSpec};

use crate::{Common, Env};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    /// `Publisher::publish`: messages and offsets in one transaction on Kafka.
    Transactional,
    /// `Log::append`, then `GroupConsumer::commit`.
    Plain,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, value_enum, default_value = "transactional")]
    mode: Mode,
    /// Batches to publish.
    #[arg(long, default_value_t = 100)]
    batches: u64,
    /// Messages per batch (the processor's default batch size).
    #[arg(long, default_value_t = 2_000)]
    batch: usize,
    /// Bytes of each message's value (a state record of the processor bench is about 200).
    #[arg(long, default_value_t = 200)]
    value_bytes: usize,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let env = Env::new(&args.common)?;
    let log = tenantsync::backends::open_log(&env.log_url.parse()?, &env.kafka).await?;
    let partitions = args.common.partitions;
    let prefix = env.topics.prefix();
    let (input, output) = (
        format!("{prefix}.publish-in"),
        format!("{prefix}.publish-out"),
    );
    for name in [&input, &output] {
        log.ensure_topic(&TopicSpec {
            name: name.clone(),
            partitions,
            cleanup: Cleanup::Delete,
        })
        .await?;
    }
    // One input entry per batch, spread over the partitions.
    let entries: Vec<Message> = (0..args.batches)
        .map(|i| Message {
            partition: (i % u64::from(partitions)) as u32,
            key: format!("in-{i}").into_bytes(),
            value: Some(b"x".to_vec()),
            headers: Vec::new(),
        })
        .collect();
    log.append(&input, entries).await?;
    let mut member = log.consume(&format!("{prefix}-publish"), &input).await?;
    let value = vec![b'v'; args.value_bytes];
    let (mut published, mut timed) = (0u64, Duration::ZERO);
    let mut n = 0usize;
    while published < args.batches {
        let polled = member.poll(1, Duration::from_secs(5)).await?;
        let Some(entry) = polled.last() else {
            continue;
        };
        let messages: Vec<Message> = (0..args.batch)
            .map(|_| {
                n += 1;
                Message {
                    partition: (n % partitions as usize) as u32,
                    key: format!("tenant-{}:item-{}", n % 1000, n % 100).into_bytes(),
                    value: Some(value.clone()),
                    headers: vec![("version".to_owned(), b"1".to_vec())],
                }
            })
            .collect();
        let offsets = vec![(entry.partition, entry.offset + 1)];
        let started = Instant::now();
        match args.mode {
            Mode::Transactional => {
                member
                    .publisher()
                    .publish(vec![Output::new(&output, messages)], offsets)
                    .await?
            }
            Mode::Plain => {
                log.append(&output, messages).await?;
                member.commit(&offsets).await?;
            }
        }
        timed += started.elapsed();
        published += 1;
    }
    let messages = args.batches * args.batch as u64;
    println!(
        "publish ({:?}, {:?} log): {} batches of {} messages of {} bytes in {:.2} s = {:.0} messages/s, {:.1} ms per batch",
        args.mode,
        args.common.log,
        args.batches,
        args.batch,
        args.value_bytes,
        timed.as_secs_f64(),
        messages as f64 / timed.as_secs_f64(),
        timed.as_secs_f64() * 1000.0 / args.batches as f64,
    );
    Ok(())
}
