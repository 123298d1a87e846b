package dev.k2stream.flinkpeer;

/**
 * One decoded trade, either exchange. A Flink POJO (public fields, no-arg constructor),
 * so it crosses the keyBy shuffle with Flink's PojoSerializer, not Kryo.
 */
public class Trade {
    /** "binance" or "kraken". */
    public String exchange;
    /** {@code binance:<s>:<t>} or {@code kraken:<symbol as sent>:<trade_id>}. */
    public String messageId;
    /** Normalized {@code BASE/QUOTE}. */
    public String symbol;
    public long tradeId;
    /** The price exactly as sent (Binance: decimal string; Kraken: JSON number text); the
     * arbitrage job replaces it with its plain form without trailing zeros. */
    public String priceText;
    public String qtyText;
    /** The price as a double, for the spread arithmetic. */
    public double price;
    /** Exact decimals, only when the job needs them (bronze); else null. */
    public java.math.BigDecimal priceDec;
    public java.math.BigDecimal qtyDec;
    /** "buy" or "sell": the taker's side. */
    public String side;
    /** Event (trade) time, microseconds since the epoch. */
    public long eventUs;
    /** Kafka record timestamp, ms. */
    public long kafkaMs;
    public int partition;
    public long offset;

    public Trade() {}

    public long eventMs() {
        return Math.floorDiv(eventUs, 1000L);
    }

    @Override
    public String toString() {
        return messageId + "@" + price;
    }
}
