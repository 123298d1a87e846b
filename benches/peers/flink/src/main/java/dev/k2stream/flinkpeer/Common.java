package dev.k2stream.flinkpeer;

import java.io.File;
import java.io.IOException;
import java.io.PrintStream;
import java.lang.management.ManagementFactory;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.core.execution.CheckpointingMode;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.iceberg.catalog.Catalog;
import org.apache.iceberg.flink.CatalogLoader;
import org.apache.iceberg.jdbc.JdbcCatalog;

/** What both jobs share: the local Flink environment, the Iceberg catalog, stdout. */
final class Common {
    private Common() {}

    /** The real stdout, kept for the one JSON result line; System.out goes to stderr. */
    static PrintStream resultOut = System.out;

    /** Flags every job takes. */
    static final Set<String> ENV_FLAGS = Set.of("brokers", "checkpoint-ms", "parallelism", "buffer-timeout-ms", "checkpoint-dir");
    static final Set<String> ENV_BOOLEANS = Set.of("object-reuse");
    /** --conf key=value, passed to Flink's Configuration as is. */
    static final Set<String> ENV_MULTI = Set.of("conf");

    /**
     * A local MiniCluster environment in this JVM. Knobs: parallelism (slots = parallelism,
     * one TaskManager), checkpoint interval (exactly-once barriers), buffer timeout (Flink's
     * network flush interval; Flink's default 100 ms), object reuse (default on: records are
     * handed between chained operators without defensive copies).
     */
    static StreamExecutionEnvironment env(Args a) {
        int parallelism = a.integer("parallelism", 2, 1);
        long ckptMs = a.lng("checkpoint-ms", 1000, 10);
        long bufferTimeout = a.lng("buffer-timeout-ms", 100, -1);
        Map<String, String> m = new HashMap<>();
        m.put("parallelism.default", Integer.toString(parallelism));
        m.put("taskmanager.numberOfTaskSlots", Integer.toString(parallelism));
        m.put("execution.checkpointing.interval", ckptMs + " ms");
        m.put("execution.checkpointing.mode", "EXACTLY_ONCE");
        // Flink's default; named so the README's list of knobs is the code's.
        m.put("execution.checkpointing.max-concurrent-checkpoints", "1");
        m.put("state.backend.type", "hashmap");
        // State snapshots go to files (the JobManager's in-memory storage caps state at 5 MB,
        // which the interval join's buffers exceed). A fresh directory per run, removed at exit.
        m.put("execution.checkpointing.storage", "filesystem");
        m.put("execution.checkpointing.dir", checkpointDir(a).toUri().toString());
        for (String kv : a.list("conf")) {
            int eq = kv.indexOf('=');
            if (eq <= 0) throw new IllegalArgumentException("--conf wants key=value, got " + kv);
            m.put(kv.substring(0, eq).trim(), kv.substring(eq + 1).trim());
        }
        Configuration conf = Configuration.fromMap(m);
        StreamExecutionEnvironment env = StreamExecutionEnvironment.createLocalEnvironment(parallelism, conf);
        env.enableCheckpointing(ckptMs, CheckpointingMode.EXACTLY_ONCE);
        env.setBufferTimeout(bufferTimeout);
        if (a.bool("object-reuse", true)) {
            env.getConfig().enableObjectReuse();
        } else {
            env.getConfig().disableObjectReuse();
        }
        return env;
    }

    private static java.nio.file.Path checkpointDir;

    /** The run's checkpoint directory: --checkpoint-dir, else a temp dir; deleted at JVM exit. */
    static synchronized java.nio.file.Path checkpointDir(Args a) {
        if (checkpointDir != null) return checkpointDir;
        try {
            String parent = a.str("checkpoint-dir", null);
            java.nio.file.Path p = parent == null
                    ? java.nio.file.Files.createTempDirectory("k2-flink-ckpt")
                    : java.nio.file.Files.createTempDirectory(java.nio.file.Files.createDirectories(java.nio.file.Path.of(parent)), "run");
            checkpointDir = p.toAbsolutePath();
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
        Runtime.getRuntime().addShutdownHook(new Thread(() -> deleteTree(checkpointDir.toFile()), "delete-checkpoints"));
        return checkpointDir;
    }

    static void deleteTree(File f) {
        try (var s = java.nio.file.Files.walk(f.toPath())) {
            s.sorted(java.util.Comparator.reverseOrder()).map(java.nio.file.Path::toFile).forEach(File::delete);
        } catch (Exception ignored) {
            // best effort
        }
    }

    /** Flags of the Iceberg catalog. */
    static final Set<String> CATALOG_FLAGS = Set.of("warehouse", "catalog-name", "namespace");

    static String warehouseDir(Args a) {
        String w = a.str("warehouse", null);
        if (w == null) throw new IllegalArgumentException("--warehouse DIR is required");
        if (w.startsWith("file://")) w = w.substring("file://".length());
        File dir = new File(w).getAbsoluteFile();
        if (!dir.isDirectory() && !dir.mkdirs()) {
            throw new IllegalArgumentException("cannot create warehouse dir " + dir);
        }
        try {
            return dir.getCanonicalPath();
        } catch (IOException e) {
            return dir.getPath();
        }
    }

    /**
     * Iceberg's JdbcCatalog on {@code jdbc:sqlite:<warehouse>/catalog.db}, warehouse
     * {@code file://<warehouse>}, schema version V1 (the {@code iceberg_type} column that
     * pyiceberg's SqlCatalog and iceberg-rust's SQL catalog also use). Files go through
     * Iceberg's HadoopFileIO; with {@code rawLocal} Hadoop's RawLocalFileSystem serves
     * {@code file://}, so no {@code .crc} side files are written (K2 writes none either).
     */
    static CatalogLoader catalogLoader(Args a, boolean rawLocal) {
        String wh = warehouseDir(a);
        String name = a.str("catalog-name", "k2");
        Map<String, String> props = new HashMap<>();
        props.put("uri", "jdbc:sqlite:" + wh + "/catalog.db");
        props.put("warehouse", "file://" + wh);
        props.put("jdbc.schema-version", "V1");
        org.apache.hadoop.conf.Configuration hadoop = new org.apache.hadoop.conf.Configuration();
        if (rawLocal) {
            hadoop.set("fs.file.impl", "org.apache.hadoop.fs.RawLocalFileSystem");
        }
        return CatalogLoader.custom(name, props, hadoop, JdbcCatalog.class.getName());
    }

    static void closeQuietly(Catalog c) {
        if (c instanceof AutoCloseable) {
            try {
                ((AutoCloseable) c).close();
            } catch (Exception ignored) {
                // best effort
            }
        }
    }

    /** Seconds since this JVM started. */
    static double jvmSeconds() {
        return (System.currentTimeMillis() - ManagementFactory.getRuntimeMXBean().getStartTime()) / 1000.0;
    }

    static double round3(double x) {
        return Math.round(x * 1000.0) / 1000.0;
    }

    static <T> Set<T> union(Set<T> a, Set<T> b) {
        java.util.LinkedHashSet<T> u = new java.util.LinkedHashSet<>(a);
        u.addAll(b);
        return u;
    }

    static <T> Set<T> union(Set<T> a, Set<T> b, Set<T> c) {
        return union(union(a, b), c);
    }

    static String list(List<String> l) {
        return String.join(",", l);
    }
}
