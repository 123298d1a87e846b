package dev.k2stream.flinkpeer;

/**
 * Symbol normalization to {@code BASE/QUOTE}, the same rules as K2's decoder
 * (src/source/kafka/decode.rs): Binance symbols split on a fixed quote-asset list, in
 * that list's order; Kraken v2 symbols upper-cased with XBT→BTC and XDG→DOGE.
 */
final class Symbols {
    private Symbols() {}

    /** K2's BINANCE_QUOTE_ASSETS, in K2's order (longest match first where it matters). */
    static final String[] BINANCE_QUOTE_ASSETS = {
        "FDUSD", "USDT", "USDC", "TUSD", "BUSD", "USDP", "AEUR", "EURI", "BIDR", "IDRT", "DOGE", "USD", "EUR", "GBP",
        "TRY", "BRL", "JPY", "AUD", "RUB", "UAH", "ZAR", "NGN", "PLN", "RON", "ARS", "MXN", "COP", "CZK", "DAI", "BTC",
        "ETH", "BNB", "XRP", "TRX", "SOL",
    };

    /** {@code BTCUSDT} → {@code BTC/USDT}; null if not upper-case ASCII alnum ending in a known quote. */
    static String normalizeBinance(String s) {
        if (s == null || s.isEmpty()) return null;
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) return null;
        }
        char last = s.charAt(s.length() - 1);
        for (String q : BINANCE_QUOTE_ASSETS) {
            if (q.charAt(q.length() - 1) != last) continue;
            if (s.length() > q.length() && s.endsWith(q)) {
                return s.substring(0, s.length() - q.length()) + "/" + q;
            }
        }
        return null;
    }

    /** {@code xbt/usd} → {@code BTC/USD}; null unless {@code BASE/QUOTE} of ASCII alnum and '.'. */
    static String normalizeKraken(String s) {
        if (s == null) return null;
        int slash = s.indexOf('/');
        if (slash <= 0 || slash == s.length() - 1) return null;
        String base = s.substring(0, slash), quote = s.substring(slash + 1);
        if (!valid(base) || !valid(quote)) return null;
        return asset(base) + "/" + asset(quote);
    }

    private static boolean valid(String part) {
        for (int i = 0; i < part.length(); i++) {
            char c = part.charAt(i);
            if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.')) return false;
        }
        return true;
    }

    private static String asset(String a) {
        if (a.equalsIgnoreCase("XBT")) return "BTC";
        if (a.equalsIgnoreCase("XDG")) return "DOGE";
        return a.toUpperCase(java.util.Locale.ROOT);
    }
}
