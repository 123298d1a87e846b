package dev.k2stream.flinkpeer;

import java.util.Set;

/**
 * Entry point: {@code bronze | arbitrage | topics | alerts-stats | oracle [flags]}. The real stdout carries
 * only the one JSON result line; anything else that prints to System.out goes to stderr,
 * and logging goes to the file that log4j2 is configured with (see run.sh).
 */
public final class Main {
    private Main() {}

    public static void main(String[] argv) {
        Common.resultOut = System.out;
        System.setOut(System.err);
        if (argv.length == 0) {
            System.err.println("usage: Main bronze|arbitrage|topics|alerts-stats|oracle [--flag value ...] (see README.md)");
            System.exit(2);
        }
        int rc = 0;
        try {
            switch (argv[0]) {
                case "bronze":
                    BronzeJob.run(new Args(argv, 1, BronzeJob.FLAGS, BronzeJob.BOOLEANS, Common.ENV_MULTI));
                    break;
                case "arbitrage":
                    ArbitrageJob.run(new Args(argv, 1, ArbitrageJob.FLAGS, Common.ENV_BOOLEANS, Common.ENV_MULTI));
                    break;
                case "topics":
                    Topics.run(new Args(argv, 1, Topics.FLAGS, Set.of(), Set.of()));
                    break;
                case "oracle":
                    Oracle.run(new Args(argv, 1, Oracle.FLAGS, Set.of(), Set.of()));
                    break;
                case "alerts-stats":
                    AlertsStats.run(new Args(argv, 1, AlertsStats.FLAGS, AlertsStats.BOOLEANS, Set.of()));
                    break;
                default:
                    System.err.println("unknown job " + argv[0] + "; want bronze|arbitrage|topics|alerts-stats|oracle");
                    rc = 2;
            }
        } catch (IllegalArgumentException e) {
            System.err.println("error: " + e.getMessage());
            rc = 2;
        } catch (Throwable t) {
            System.err.println("failed: " + t);
            t.printStackTrace(System.err);
            rc = 1;
        }
        // Flink, Kafka and SQLite leave non-daemon threads behind; the job is over.
        System.exit(rc);
    }
}
