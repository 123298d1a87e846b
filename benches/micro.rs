//! Micro-benchmarks of K2's hot paths, one worker, no Kafka.
//!
//! ```sh
//! cargo bench --bench micro                 # everything, ~2-3 minutes on 2 cores
//! cargo bench --bench micro -- decode       # only the groups matching a filter
//! cargo bench --bench micro -- join_memory  # bytes of interval-join state per live record and key
//! cargo bench --bench micro -- dedup_memory # bytes of dedup state per live key
//! ```
//!
//! | group               | what one iteration does                                                  |
//! | ------------------- | ------------------------------------------------------------------------ |
//! | `decode/*`          | [`decode`] of 10k feed messages of one exchange                          |
//! | `dedup/trades`      | a 1-worker dataflow pushing 120k trades (~5% repeated ids) through dedup |
//! | `dedup/replay_only` | the same dataflow without dedup: the harness cost, to subtract           |
//! | `interval_join`     | a 1-worker dataflow joining Binance × Kraken trades by symbol, Δ = 500 ms |
//! | `parquet_write`     | `TableWriter::write` of 100k trades into a local Iceberg table           |
//! | `join_memory`       | filling a [`JoinState`] with trades; first prints its heap bytes per live record and per live key |
//! | `dedup_memory`      | filling a [`DedupState`] with trades; first prints its heap bytes per live key (a trade id it remembers), for numbered trades and for plain ids |
//!
//! Every input comes from the deterministic [`Feed`] (the generator shared
//! with `k2 produce` and the tests) and is generated once, outside the timed
//! loops. Criterion reports elements/s: messages for `decode`, input records
//! for the dataflows, rows for `parquet_write`. Medians are in
//! `target/criterion/<group>/<bench>/new/estimates.json`.
//!
//! `join_memory` counts heap bytes with a counting global allocator that is
//! switched on only around its measurement, so the other groups run at the
//! system allocator's speed (one relaxed atomic load per allocation).

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
// The synthetic feed of `k2 produce`, shared rather than copied.
#[path = "../dataflows/feed.rs"]
#[allow(dead_code, unused_imports)]
mod feed;
use feed::{Feed, FeedConfig};
use k2::checkpoint::CommitGroups;
use k2::operators::arbitrage::Leg;
use k2::operators::dedup::{DedupState, DedupStats};
use k2::operators::{Dedup, DedupId, DedupKey, DedupParams, IntervalJoin, JoinState, JoinStats};
use k2::record::{Exchange, SourcePosition, Trade};
use k2::sink::iceberg::{JobCatalog, RowContext, TableDecl, TableWriter};
use k2::source::kafka::decode::decode;
use k2::time::Time;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

/// Start of the synthetic clock: 2023-11-14T22:13:20Z.
const T0_US: i64 = 1_700_000_000_000_000;
/// Records per timely message, as the Kafka source emits them (its poll batch
/// is 4096 messages, usually less in practice).
const BATCH: usize = 1024;
/// Epoch length of the default config.
const EPOCH_MS: u64 = 200;
/// Bounded out-of-orderness of the generated feeds, ms.
const OUT_OF_ORDER_MS: i64 = 500;

fn feed_config(duplicates: f64) -> FeedConfig {
    FeedConfig {
        duplicate_fraction: duplicates,
        malformed_fraction: 0.0,
        max_out_of_order_ms: OUT_OF_ORDER_MS,
        ..FeedConfig::default()
    }
}

fn position(offset: i64, now_us: i64) -> SourcePosition {
    SourcePosition {
        topic: 0,
        partition: 0,
        offset,
        kafka_ts_ms: now_us / 1000,
        ingest_us: now_us,
    }
}

/// `count` payloads of one exchange, one message per ms of synthetic clock.
fn payloads(exchange: Exchange, count: usize) -> Vec<Vec<u8>> {
    let mut feed = Feed::new(exchange, &feed_config(0.0));
    (0..count)
        .map(|i| feed.next_message(T0_US + i as i64 * 1_000).payload)
        .collect()
}

/// Decoded trades of one exchange's feed, in timely batches stamped as the
/// Kafka source would stamp them: epoch from the clock, event-time watermark
/// trailing the clock by the out-of-orderness bound (so every record is on
/// time).
struct Batches {
    batches: Vec<(Time, Vec<Trade>)>,
    records: usize,
}

impl Batches {
    /// Interleaves the feeds of `exchanges` on one clock advancing `step_us`
    /// per message, until `messages` messages per exchange are decoded.
    fn generate(exchanges: &[Exchange], duplicates: f64, messages: usize, step_us: i64) -> Vec<Batches> {
        let cfg = feed_config(duplicates);
        exchanges
            .iter()
            .map(|&exchange| {
                let mut feed = Feed::new(exchange, &cfg);
                let mut batches = Vec::new();
                let mut current: Vec<Trade> = Vec::with_capacity(BATCH);
                let mut batch_start = T0_US;
                let mut records = 0;
                for i in 0..messages {
                    let now = T0_US + i as i64 * step_us;
                    if current.is_empty() {
                        batch_start = now;
                    }
                    let msg = feed.next_message(now);
                    decode(exchange, &msg.payload, &position(i as i64, now), &mut current).expect("valid feed message");
                    if current.len() >= BATCH || i + 1 == messages {
                        // Events are >= clock - out-of-orderness (Binance floors to ms).
                        let watermark = (batch_start / 1000 - OUT_OF_ORDER_MS - 1) as u64;
                        let time = Time::new(watermark / EPOCH_MS, watermark);
                        records += current.len();
                        batches.push((time, std::mem::replace(&mut current, Vec::with_capacity(BATCH))));
                    }
                }
                Batches { batches, records }
            })
            .collect()
    }

    fn merged(mut parts: Vec<Batches>) -> Batches {
        // Same clock for all parts: merge by time so the stamps never go back.
        let mut all: Vec<(Time, Vec<Trade>)> = parts.iter_mut().flat_map(|p| p.batches.drain(..)).collect();
        all.sort_by_key(|(t, _)| (t.epoch, t.event));
        let records = all.iter().map(|(_, b)| b.len()).sum();
        Batches { batches: all, records }
    }
}

/// A source that replays pre-built batches, one per activation, holding a
/// capability at each batch's time, like the Kafka source does.
fn replay<'scope>(scope: Scope<'scope, Time>, batches: Vec<(Time, Vec<Trade>)>) -> Stream<'scope, Time, Vec<Trade>> {
    source::<_, CapacityContainerBuilder<Vec<Trade>>, _, _>(scope, "Replay", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        let mut batches = batches.into_iter();
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            match batches.next() {
                Some((time, mut data)) => {
                    c.downgrade(&time);
                    output.session(&*c).give_container(&mut data);
                    activator.activate();
                }
                None => cap = None,
            }
        }
    })
}

fn bench_decode(c: &mut Criterion) {
    const N: usize = 10_000;
    let mut group = c.benchmark_group("decode");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for exchange in [Exchange::Binance, Exchange::Kraken] {
        let msgs = payloads(exchange, N);
        let pos = position(0, T0_US);
        let mut out: Vec<Trade> = Vec::with_capacity(4 * N);
        decode_all(exchange, &msgs, &pos, &mut out);
        eprintln!(
            "decode/{exchange}: {N} messages, {} trades, {:.1} bytes/message",
            out.len(),
            msgs.iter().map(Vec::len).sum::<usize>() as f64 / N as f64
        );
        group.throughput(Throughput::Elements(N as u64));
        group.bench_function(exchange.name(), |b| {
            b.iter(|| {
                out.clear();
                decode_all(exchange, black_box(&msgs), &pos, &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn decode_all(exchange: Exchange, msgs: &[Vec<u8>], pos: &SourcePosition, out: &mut Vec<Trade>) {
    for m in msgs {
        decode(exchange, m, pos, out).expect("valid feed message");
    }
}

fn bench_dedup(c: &mut Criterion) {
    const MESSAGES_PER_EXCHANGE: usize = 40_000;
    // Both exchanges on one clock, 1 ms per message each: ~100k trades over
    // 40 s of event time, so a 60 s TTL keeps every key (as the 10 min TTL of
    // the default config does in a short run).
    let data = Batches::merged(Batches::generate(
        &[Exchange::Binance, Exchange::Kraken],
        0.05,
        MESSAGES_PER_EXCHANGE,
        1_000,
    ));
    let distinct = {
        let mut ids: Vec<k2::record::MessageId> = data
            .batches
            .iter()
            .flat_map(|(_, b)| b.iter().map(|t| t.message_id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    };
    eprintln!(
        "dedup: {} records in {} batches, {} distinct ids ({:.1}% repeated)",
        data.records,
        data.batches.len(),
        distinct,
        100.0 * (1.0 - distinct as f64 / data.records as f64)
    );
    let mut group = c.benchmark_group("dedup");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(data.records as u64));
    group.bench_function("trades", |b| {
        b.iter_batched(
            || data.batches.clone(),
            |batches| {
                let stats = Arc::new(DedupStats::default());
                let s = stats.clone();
                timely::execute_directly(move |worker| {
                    worker.dataflow::<Time, _, _>(|scope| {
                        replay(scope, batches).dedup(DedupParams::default(), s);
                    });
                });
                let passed = stats.passed.load(Ordering::Relaxed) as usize;
                assert_eq!(passed, distinct);
                passed
            },
            BatchSize::PerIteration,
        )
    });
    // The harness alone: the same batches replayed into a dataflow and dropped,
    // to subtract from the above.
    group.bench_function("replay_only", |b| {
        b.iter_batched(
            || data.batches.clone(),
            |batches| {
                timely::execute_directly(move |worker| {
                    worker.dataflow::<Time, _, _>(|scope| {
                        replay(scope, batches);
                    });
                });
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn bench_interval_join(c: &mut Criterion) {
    const MESSAGES_PER_EXCHANGE: usize = 30_000;
    const DELTA_MS: u64 = 500;
    // 10 ms of clock per message and exchange: 25 Binance trades/s and ~50
    // Kraken trades/s per symbol (4 symbols), over 300 s of event time.
    let mut parts = Batches::generate(
        &[Exchange::Binance, Exchange::Kraken],
        0.0,
        MESSAGES_PER_EXCHANGE,
        10_000,
    );
    let kraken = parts.pop().expect("kraken");
    let binance = parts.pop().expect("binance");
    let records = binance.records + kraken.records;
    let run = |binance: Vec<(Time, Vec<Trade>)>, kraken: Vec<(Time, Vec<Trade>)>| {
        let stats = Arc::new(JoinStats::default());
        let s = stats.clone();
        timely::execute_directly(move |worker| {
            worker.dataflow::<Time, _, _>(|scope| {
                replay(scope, binance).interval_join_with(
                    replay(scope, kraken),
                    DELTA_MS,
                    &[],
                    s,
                    |b: &Trade, k: &Trade| (b.trade_id, k.trade_id),
                );
            });
        });
        stats
    };
    let stats = run(binance.batches.clone(), kraken.batches.clone());
    let pairs = stats.pairs.load(Ordering::Relaxed);
    eprintln!(
        "interval_join: {} Binance + {} Kraken trades -> {pairs} pairs ({:.1} per input record), {} evicted, \
         {} late",
        binance.records,
        kraken.records,
        pairs as f64 / records as f64,
        stats.evicted.load(Ordering::Relaxed),
        stats.late.load(Ordering::Relaxed),
    );
    let mut group = c.benchmark_group("interval_join");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(records as u64));
    group.bench_function("binance_x_kraken", |b| {
        b.iter_batched(
            || (binance.batches.clone(), kraken.batches.clone()),
            |(b, k)| {
                let stats = run(b, k);
                assert_eq!(stats.pairs.load(Ordering::Relaxed), pairs);
                stats
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// A fresh warehouse under the system temp folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("k2-micro-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bench_parquet_write(c: &mut Criterion) {
    const ROWS: usize = 100_000;
    let trades: Vec<Trade> = Batches::generate(&[Exchange::Binance], 0.0, ROWS, 1_000)
        .pop()
        .expect("binance")
        .batches
        .into_iter()
        .flat_map(|(_, b)| b)
        .collect();
    assert_eq!(trades.len(), ROWS);

    let dir = TempDir::new("parquet");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cfg = k2::config::IcebergConfig {
        warehouse: dir.0.join("warehouse"),
        ..Default::default()
    };
    let table = runtime.block_on(async {
        let catalog = JobCatalog::open(&cfg, &Default::default()).await.expect("open catalog");
        catalog
            .ensure_table(&TableDecl::of::<Trade>("bronze_binance_trades"))
            .await
            .expect("create table");
        catalog.load("bronze_binance_trades").await.expect("load table")
    });
    let writer = TableWriter::<Trade> {
        backpressure: Default::default(),
        name: "bronze_binance_trades".into(),
        table,
        job: "micro".into(),
        run_id: "bench".into(),
        target_file_size: cfg.target_file_size_bytes as usize,
        groups: CommitGroups {
            epoch_ms: EPOCH_MS,
            commit_interval_ms: 1000,
        },
        ctx: RowContext {
            topics: Arc::new(vec!["market.crypto.trades.binance".into()]),
        },
        runtime: runtime.handle().clone(),
        rows: PhantomData,
    };
    let staged = writer.write(0, 0, &mut trades.clone()).expect("write");
    eprintln!(
        "parquet_write: {} rows -> {} file(s), {:.1} MiB, {:.1} bytes/row",
        staged.rows,
        staged.data_files.len(),
        staged.bytes as f64 / (1 << 20) as f64,
        staged.bytes as f64 / staged.rows as f64
    );

    let mut group = c.benchmark_group("parquet_write");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(ROWS as u64));
    // Each iteration writes into a new commit group, so file names never collide.
    let mut group_label = 1u64;
    group.bench_function("trades_100k", |b| {
        b.iter_batched(
            || trades.clone(),
            |mut rows| {
                group_label += 1;
                let staged = writer.write(0, group_label, &mut rows).expect("write");
                assert_eq!(staged.rows, ROWS as u64);
                staged
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    drop(writer);
    drop(runtime);
    drop(dir);
}

/// The system allocator, counting live heap bytes while [`COUNTING`] is on.
struct CountingAlloc;

/// Whether allocations are being counted.
static COUNTING: AtomicBool = AtomicBool::new(false);
/// Bytes allocated minus bytes freed while counting.
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

impl CountingAlloc {
    fn count(bytes: usize, sign: isize) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(sign * bytes as isize, Ordering::Relaxed);
        }
    }
}

// Audited: the only `unsafe` of the benchmarks. Every method forwards its
// arguments unchanged to `System`, which upholds `GlobalAlloc`'s contract, and
// returns its result; the counters are plain atomics, and a failed
// allocation or reallocation (null) is not counted.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::count(layout.size(), 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::count(layout.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) };
        Self::count(layout.size(), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; `ptr` came from `System` with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            Self::count(layout.size(), -1);
            Self::count(new_size, 1);
        }
        p
    }
}

/// Heap bytes allocated (net) while running `f`, and its result.
fn heap_bytes<T>(f: impl FnOnce() -> T) -> (isize, T) {
    LIVE_BYTES.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let out = f();
    COUNTING.store(false, Ordering::SeqCst);
    (LIVE_BYTES.load(Ordering::SeqCst), out)
}

type TradeJoin = JoinState<k2::record::Symbol, Leg, Leg>;

/// A join state holding `per_key` Binance and `per_key` Kraken trades for
/// each of `keys` symbols, 1 ms apart in event time. The trades are clones of
/// `templates` (decoded feed trades) with the symbol and message id made
/// unique (interned symbols, as the source interns them).
fn fill_join_state(templates: &[Trade; 2], keys: usize, per_key: usize) -> TradeJoin {
    let mut state = TradeJoin::new();
    for k in 0..keys {
        let symbol = k2::record::Symbol::from(format!("S{k:06}/USDT").as_str());
        let stream = k2::record::Symbol::from(format!("binance:S{k:06}USDT").as_str());
        for i in 0..per_key {
            for (side, template) in templates.iter().enumerate() {
                let mut t = template.clone();
                t.symbol = symbol;
                t.message_id = k2::record::MessageId {
                    stream,
                    trade_id: 100_000_000 + i as u64,
                };
                t.event_us = T0_US + i as i64 * 1_000;
                let ms = (t.event_us / 1000) as u64;
                let time = Time::new(ms / EPOCH_MS, ms);
                if side == 0 {
                    state.insert_left(time, Leg::from(&t));
                } else {
                    state.insert_right(time, Leg::from(&t));
                }
            }
        }
    }
    state
}

fn bench_join_memory(c: &mut Criterion) {
    let template = |exchange| {
        Batches::generate(&[exchange], 0.0, 1, 1_000)
            .pop()
            .and_then(|b| b.batches.into_iter().next())
            .and_then(|(_, mut trades)| trades.pop())
            .expect("one decoded trade")
    };
    let templates = [template(Exchange::Binance), template(Exchange::Kraken)];
    let mut group = c.benchmark_group("join_memory");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    const KEYS: usize = 1_000;
    const PER_KEY: usize = 100;
    group.throughput(Throughput::Elements((2 * KEYS * PER_KEY) as u64));
    let mut printed = false;
    group.bench_function("fill_1k_keys_x_100", |b| {
        if !printed {
            printed = true;
            eprintln!(
                "join_memory: size_of::<Trade>() = {} bytes, the join's Leg of it {} bytes; \
                 per side, a key is a symbol and a record a trade's leg",
                std::mem::size_of::<Trade>(),
                std::mem::size_of::<Leg>()
            );
            // Many keys, few records each: the per-key cost shows; many
            // records per key: the per-record cost does.
            for (keys, per_key) in [(100_000, 1), (10_000, 10), (KEYS, PER_KEY), (10, 10_000)] {
                let (bytes, state) = heap_bytes(|| fill_join_state(&templates, keys, per_key));
                let (records, live_keys) = (state.live_records(), state.live_keys());
                assert_eq!((records, live_keys), (2 * keys * per_key, 2 * keys));
                eprintln!(
                    "join_memory: {live_keys:>6} live keys x {per_key:>5} records: {:>7.1} MiB, \
                     {:>6.0} bytes per live record, {:>9.0} bytes per live key",
                    bytes as f64 / (1 << 20) as f64,
                    bytes as f64 / records as f64,
                    bytes as f64 / live_keys as f64,
                );
                drop(state);
            }
        }
        b.iter(|| fill_join_state(&templates, KEYS, PER_KEY))
    });
    group.finish();
}

/// A record of the dedup memory benchmark: numbered (`stream`, `seq`) or by
/// `id`, as a trade's message id is.
struct Key {
    stream: String,
    seq: u64,
    id: Option<String>,
}

impl DedupKey for Key {
    fn dedup_id(&self) -> DedupId<'_> {
        match &self.id {
            Some(id) => DedupId::Id(id),
            None => DedupId::Sequenced {
                stream: &self.stream,
                seq: self.seq,
            },
        }
    }
    fn event_us(&self) -> u64 {
        T0_US as u64 + self.seq
    }
}

/// A dedup state that has seen `per_stream` trades of each of `streams`
/// symbols: by sequence number, or (`by_id`) by message id.
fn fill_dedup_state(streams: usize, per_stream: u64, by_id: bool) -> DedupState {
    let mut state = DedupState::default();
    let params = DedupParams {
        retention_us: u64::MAX / 2,
        max_gaps: 100_000,
    };
    for s in 0..streams {
        let stream = format!("binance:S{s:06}USDT");
        for i in 0..per_stream {
            let seq = 148_234_072 + i;
            let id = by_id.then(|| format!("{stream}:{seq}"));
            let key = Key {
                stream: stream.clone(),
                seq,
                id,
            };
            assert!(state.observe(&key, &params).first);
        }
    }
    state
}

fn bench_dedup_memory(c: &mut Criterion) {
    let mut group = c.benchmark_group("dedup_memory");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let mut printed = false;
    group.bench_function("fill_1k_streams_x_100", |b| {
        if !printed {
            printed = true;
            // A live key is a trade id dedup would recognise as a repeat.
            for (streams, per_stream) in [(1_000, 1_000), (100, 100_000), (10_000, 100)] {
                for by_id in [false, true] {
                    let (bytes, state) = heap_bytes(|| fill_dedup_state(streams, per_stream, by_id));
                    let live = if by_id { state.ids() as u64 } else { state.numbers() };
                    assert_eq!(live, streams as u64 * per_stream);
                    eprintln!(
                        "dedup_memory: {:<9} {streams:>6} streams x {per_stream:>6} trades: {:>8.1} MiB, {:>7.2} bytes per live key",
                        if by_id { "by id" } else { "by number" },
                        bytes as f64 / (1 << 20) as f64,
                        bytes as f64 / live as f64,
                    );
                }
            }
        }
        b.iter(|| fill_dedup_state(1_000, 100, false))
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_decode,
    bench_dedup,
    bench_interval_join,
    bench_parquet_write,
    bench_join_memory,
    bench_dedup_memory
);
criterion_main!(benches);
