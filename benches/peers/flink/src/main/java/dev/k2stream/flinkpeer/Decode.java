package dev.k2stream.flinkpeer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import java.io.IOException;
import java.math.BigDecimal;
import java.time.OffsetDateTime;
import java.util.ArrayList;
import java.util.List;

/**
 * Decoding of the exchanges' native JSON with Jackson's streaming parser (no tree, no
 * data binding): Binance spot {@code trade} events and Kraken WebSocket v2 {@code trade}
 * channel messages ({@code type} {@code snapshot} or {@code update}, one or more trades).
 *
 * <p>A message that does not decode returns null (Binance) or an empty list (Kraken): a
 * Kraken message with one bad trade is rejected whole. Decimals are checked to fit
 * decimal(38,18) exactly (no rounding), as K2 does.
 */
final class Decode {
    private Decode() {}

    static final JsonFactory JSON = new JsonFactory();
    private static final BigDecimal MAX_38_18 = new BigDecimal("99999999999999999999.999999999999999999");

    /**
     * A decimal in JSON number grammar ({@code -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?},
     * as K2 requires: no {@code .5}, {@code 1.}, {@code +1}) that fits decimal(38,18) exactly,
     * else null.
     */
    static BigDecimal decimal(String text) {
        if (text == null || !jsonNumber(text)) return null;
        BigDecimal d;
        try {
            d = new BigDecimal(text);
        } catch (NumberFormatException e) {
            return null;
        }
        if (d.scale() > 18) {
            d = d.stripTrailingZeros();
            if (d.scale() > 18) return null;
        }
        if (d.abs().compareTo(MAX_38_18) > 0) return null;
        return d;
    }

    static boolean jsonNumber(String s) {
        int n = s.length(), i = 0;
        if (n == 0) return false;
        if (s.charAt(0) == '-') i++;
        if (i >= n) return false;
        char c = s.charAt(i);
        if (c == '0') {
            i++;
        } else if (c >= '1' && c <= '9') {
            while (i < n && isDigit(s.charAt(i))) i++;
        } else {
            return false;
        }
        if (i < n && s.charAt(i) == '.') {
            int start = ++i;
            while (i < n && isDigit(s.charAt(i))) i++;
            if (i == start) return false;
        }
        if (i < n && (s.charAt(i) == 'e' || s.charAt(i) == 'E')) {
            i++;
            if (i < n && (s.charAt(i) == '+' || s.charAt(i) == '-')) i++;
            int start = i;
            while (i < n && isDigit(s.charAt(i))) i++;
            if (i == start) return false;
        }
        return i == n;
    }

    private static boolean isDigit(char c) {
        return c >= '0' && c <= '9';
    }

    /** Binance spot trade event; null if malformed. */
    static Trade binance(byte[] value, long kafkaMs, int partition, long offset, boolean keepDecimals) {
        if (value == null) return null;
        String e = null, s = null, p = null, q = null;
        long t = 0, tt = 0;
        boolean hasT = false, hasTT = false, hasM = false, m = false;
        try (JsonParser jp = JSON.createParser(value)) {
            if (jp.nextToken() != JsonToken.START_OBJECT) return null;
            JsonToken tok;
            while ((tok = jp.nextToken()) == JsonToken.FIELD_NAME) {
                String name = jp.currentName();
                JsonToken v = jp.nextToken();
                switch (name) {
                    case "e":
                        if (v != JsonToken.VALUE_STRING) return null;
                        e = jp.getText();
                        break;
                    case "s":
                        if (v != JsonToken.VALUE_STRING) return null;
                        s = jp.getText();
                        break;
                    case "t":
                        if (v != JsonToken.VALUE_NUMBER_INT) return null;
                        t = jp.getLongValue();
                        hasT = true;
                        break;
                    case "p":
                        if (v != JsonToken.VALUE_STRING) return null;
                        p = jp.getText();
                        break;
                    case "q":
                        if (v != JsonToken.VALUE_STRING) return null;
                        q = jp.getText();
                        break;
                    case "T":
                        if (v != JsonToken.VALUE_NUMBER_INT) return null;
                        tt = jp.getLongValue();
                        hasTT = true;
                        break;
                    case "m":
                        if (v == JsonToken.VALUE_TRUE) m = true;
                        else if (v == JsonToken.VALUE_FALSE) m = false;
                        else return null;
                        hasM = true;
                        break;
                    default:
                        jp.skipChildren();
                }
            }
            if (tok != JsonToken.END_OBJECT) return null;
        } catch (IOException | RuntimeException ex) {
            return null;
        }
        if (!"trade".equals(e) || s == null || !hasT || t < 0 || p == null || q == null || !hasTT || !hasM) return null;
        String symbol = Symbols.normalizeBinance(s);
        if (symbol == null) return null;
        BigDecimal pd = decimal(p), qd = decimal(q);
        if (pd == null || qd == null) return null;
        Trade r = new Trade();
        if (keepDecimals) {
            r.priceDec = pd;
            r.qtyDec = qd;
        }
        r.exchange = "binance";
        r.messageId = "binance:" + s + ":" + t;
        r.symbol = symbol;
        r.tradeId = t;
        r.priceText = p;
        r.qtyText = q;
        r.price = Double.parseDouble(p);
        // m = "buyer is the maker": true when the taker sold.
        r.side = m ? "sell" : "buy";
        r.eventUs = Math.multiplyExact(tt, 1000L);
        r.kafkaMs = kafkaMs;
        r.partition = partition;
        r.offset = offset;
        return r;
    }

    /** Kraken v2 trade message; empty if malformed or not a trade message. */
    static List<Trade> kraken(byte[] value, long kafkaMs, int partition, long offset) {
        List<Trade> out = new ArrayList<>(2);
        if (value == null) return out;
        String channel = null, type = null;
        boolean sawData = false;
        try (JsonParser jp = JSON.createParser(value)) {
            if (jp.nextToken() != JsonToken.START_OBJECT) return List.of();
            JsonToken tok;
            while ((tok = jp.nextToken()) == JsonToken.FIELD_NAME) {
                String name = jp.currentName();
                JsonToken v = jp.nextToken();
                switch (name) {
                    case "channel":
                        if (v != JsonToken.VALUE_STRING) return List.of();
                        channel = jp.getText();
                        break;
                    case "type":
                        if (v != JsonToken.VALUE_STRING) return List.of();
                        type = jp.getText();
                        break;
                    case "data":
                        if (v != JsonToken.START_ARRAY) return List.of();
                        sawData = true;
                        while ((v = jp.nextToken()) == JsonToken.START_OBJECT) {
                            Trade t = krakenTrade(jp, kafkaMs, partition, offset);
                            if (t == null) return List.of();
                            out.add(t);
                        }
                        if (v != JsonToken.END_ARRAY) return List.of();
                        break;
                    default:
                        jp.skipChildren();
                }
            }
            if (tok != JsonToken.END_OBJECT) return List.of();
        } catch (IOException | RuntimeException ex) {
            return List.of();
        }
        if (!"trade".equals(channel) || !("update".equals(type) || "snapshot".equals(type)) || !sawData || out.isEmpty()) {
            return List.of();
        }
        return out;
    }

    /** One element of {@code data}, the parser positioned on its START_OBJECT. */
    private static Trade krakenTrade(JsonParser jp, long kafkaMs, int partition, long offset) throws IOException {
        String symbol = null, side = null, price = null, qty = null, ts = null;
        long id = 0;
        boolean hasId = false;
        JsonToken tok;
        while ((tok = jp.nextToken()) == JsonToken.FIELD_NAME) {
            String name = jp.currentName();
            JsonToken v = jp.nextToken();
            switch (name) {
                case "symbol":
                    if (v != JsonToken.VALUE_STRING) return null;
                    symbol = jp.getText();
                    break;
                case "side":
                    if (v != JsonToken.VALUE_STRING) return null;
                    side = jp.getText();
                    break;
                case "price":
                    if (v != JsonToken.VALUE_NUMBER_INT && v != JsonToken.VALUE_NUMBER_FLOAT) return null;
                    price = jp.getText();
                    break;
                case "qty":
                    if (v != JsonToken.VALUE_NUMBER_INT && v != JsonToken.VALUE_NUMBER_FLOAT) return null;
                    qty = jp.getText();
                    break;
                case "trade_id":
                    if (v != JsonToken.VALUE_NUMBER_INT) return null;
                    id = jp.getLongValue();
                    hasId = true;
                    break;
                case "timestamp":
                    if (v != JsonToken.VALUE_STRING) return null;
                    ts = jp.getText();
                    break;
                default:
                    jp.skipChildren();
            }
        }
        if (tok != JsonToken.END_OBJECT) return null;
        if (symbol == null || side == null || price == null || qty == null || !hasId || id < 0 || ts == null) return null;
        if (!side.equals("buy") && !side.equals("sell")) return null;
        String norm = Symbols.normalizeKraken(symbol);
        if (norm == null || decimal(price) == null || decimal(qty) == null) return null;
        long us = rfc3339Micros(ts);
        if (us == Long.MIN_VALUE) return null;
        Trade r = new Trade();
        r.exchange = "kraken";
        r.messageId = "kraken:" + symbol + ":" + id;
        r.symbol = norm;
        r.tradeId = id;
        r.priceText = price;
        r.qtyText = qty;
        r.price = Double.parseDouble(price);
        r.side = side;
        r.eventUs = us;
        r.kafkaMs = kafkaMs;
        r.partition = partition;
        r.offset = offset;
        return r;
    }

    /**
     * RFC 3339 to microseconds since the epoch (sub-microsecond digits truncated);
     * Long.MIN_VALUE if invalid. Fast path for {@code YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z}, the
     * form Kraken sends; other offsets go through java.time.
     */
    static long rfc3339Micros(String s) {
        int n = s.length();
        if (n >= 20 && s.charAt(4) == '-' && s.charAt(7) == '-' && (s.charAt(10) == 'T' || s.charAt(10) == 't')
                && s.charAt(13) == ':' && s.charAt(16) == ':' && (s.charAt(n - 1) == 'Z' || s.charAt(n - 1) == 'z')) {
            int y = digits(s, 0, 4), mo = digits(s, 5, 2), d = digits(s, 8, 2);
            int h = digits(s, 11, 2), mi = digits(s, 14, 2), se = digits(s, 17, 2);
            if (y < 0 || mo < 1 || mo > 12 || d < 1 || d > 31 || h < 0 || h > 23 || mi < 0 || mi > 59 || se < 0 || se > 59) {
                return Long.MIN_VALUE;
            }
            long micros = 0;
            int i = 19;
            if (i < n - 1) {
                if (s.charAt(i) != '.' || n - 1 - (i + 1) < 1 || n - 1 - (i + 1) > 9) return Long.MIN_VALUE;
                int scale = 100_000;
                for (int j = i + 1; j < n - 1; j++) {
                    char c = s.charAt(j);
                    if (c < '0' || c > '9') return Long.MIN_VALUE;
                    micros += (long) (c - '0') * scale;
                    scale /= 10;
                }
            }
            if (d > daysInMonth(y, mo)) return Long.MIN_VALUE;
            long days = daysFromCivil(y, mo, d);
            return ((days * 86_400L + h * 3600L + mi * 60L + se) * 1_000_000L) + micros;
        }
        try {
            OffsetDateTime t = OffsetDateTime.parse(s);
            return t.toEpochSecond() * 1_000_000L + t.getNano() / 1000;
        } catch (RuntimeException e) {
            return Long.MIN_VALUE;
        }
    }

    private static int digits(String s, int at, int len) {
        int v = 0;
        for (int i = at; i < at + len; i++) {
            char c = s.charAt(i);
            if (c < '0' || c > '9') return -1;
            v = v * 10 + (c - '0');
        }
        return v;
    }

    private static int daysInMonth(int y, int m) {
        switch (m) {
            case 2:
                return (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)) ? 29 : 28;
            case 4: case 6: case 9: case 11:
                return 30;
            default:
                return 31;
        }
    }

    /** Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
    private static long daysFromCivil(long y, long m, long d) {
        y -= m <= 2 ? 1 : 0;
        long era = Math.floorDiv(y, 400);
        long yoe = y - era * 400;
        long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
        long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        return era * 146097 + doe - 719468;
    }
}
