package dev.k2stream.flinkpeer;

import com.fasterxml.jackson.core.JsonGenerator;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;

/** One arbitrage alert (a Flink POJO) and its JSON form. */
public class Alert {
    public String alertId;
    public String symbol;
    public String buyExchange;
    public String sellExchange;
    /** Prices as sent by the exchanges, as plain JSON numbers (exact; see plainNumber). */
    public String buyPrice;
    public String sellPrice;
    public double spreadBps;
    public String binanceMessageId;
    public String krakenMessageId;
    public long binanceEventMs;
    public long krakenEventMs;
    public long produceMs;
    public long detectedMs;

    public Alert() {}

    /** FNV-1a 64-bit of the UTF-8 bytes, as 16 lower-case hex digits. */
    static String fnv1a64Hex(String s) {
        long h = 0xcbf29ce484222325L;
        for (byte b : s.getBytes(StandardCharsets.UTF_8)) {
            h ^= (b & 0xffL);
            h *= 0x100000001b3L;
        }
        String hex = Long.toHexString(h);
        return hex.length() == 16 ? hex : "0".repeat(16 - hex.length()) + hex;
    }

    static String alertId(String binanceMessageId, String krakenMessageId) {
        return fnv1a64Hex(binanceMessageId + "|" + krakenMessageId);
    }

    /** A decimal's text as a plain JSON number without trailing zeros (60123.45000000 → 60123.45). */
    static String plainNumber(String decimalText) {
        BigDecimal d = new BigDecimal(decimalText).stripTrailingZeros();
        return d.scale() < 0 ? d.setScale(0).toPlainString() : d.toPlainString();
    }

    /** The alert JSON, exactly the agreed field names. */
    byte[] toJson(ByteArrayOutputStream buf) throws IOException {
        buf.reset();
        try (JsonGenerator g = Decode.JSON.createGenerator(buf)) {
            g.writeStartObject();
            g.writeStringField("alert_id", alertId);
            g.writeStringField("symbol", symbol);
            g.writeStringField("buy_exchange", buyExchange);
            g.writeStringField("sell_exchange", sellExchange);
            g.writeFieldName("buy_price");
            g.writeNumber(buyPrice);
            g.writeFieldName("sell_price");
            g.writeNumber(sellPrice);
            g.writeNumberField("spread_bps", spreadBps);
            g.writeStringField("binance_message_id", binanceMessageId);
            g.writeStringField("kraken_message_id", krakenMessageId);
            g.writeNumberField("binance_event_ms", binanceEventMs);
            g.writeNumberField("kraken_event_ms", krakenEventMs);
            g.writeNumberField("produce_ms", produceMs);
            g.writeNumberField("detected_ms", detectedMs);
            g.writeEndObject();
        }
        return buf.toByteArray();
    }
}
