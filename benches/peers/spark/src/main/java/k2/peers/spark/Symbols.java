package k2.peers.spark;

import static org.apache.spark.sql.functions.*;

import org.apache.spark.sql.Column;

/** Symbol normalization as Spark SQL expressions (no UDF, so whole-stage codegen keeps working). */
final class Symbols {
  private Symbols() {}

  /**
   * K2's fixed list of Binance quote assets ({@code BINANCE_QUOTE_ASSETS} in
   * src/source/kafka/decode.rs), longest first.
   */
  static final String[] BINANCE_QUOTES = {
    "FDUSD", "USDT", "USDC", "TUSD", "BUSD", "USDP", "AEUR", "EURI", "BIDR", "IDRT", "DOGE", "USD",
    "EUR", "GBP", "TRY", "BRL", "JPY", "AUD", "RUB", "UAH", "ZAR", "NGN", "PLN", "RON", "ARS", "MXN",
    "COP", "CZK", "DAI", "BTC", "ETH", "BNB", "XRP", "TRX", "SOL"
  };

  /**
   * The lazy base makes the regex pick the shortest base, i.e. the longest quote that is a suffix:
   * the same as K2's longest-first search ({@code BTCFDUSD} -> {@code BTC/FDUSD}).
   */
  static final String BINANCE_RE = "^([A-Z0-9]+?)(" + String.join("|", BINANCE_QUOTES) + ")$";

  /** {@code BTCUSDT} -> {@code BTC/USDT}; null when the symbol does not split. */
  static Column binance(Column s) {
    Column base = regexp_extract(s, BINANCE_RE, 1);
    Column quote = regexp_extract(s, BINANCE_RE, 2);
    return when(base.notEqual(lit("")), concat(base, lit("/"), quote));
  }

  /** {@code xbt/usd} -> {@code BTC/USD} (XBT->BTC, XDG->DOGE, upper case); null if malformed. */
  static Column kraken(Column s) {
    String re = "^([A-Za-z0-9.]+)/([A-Za-z0-9.]+)$";
    Column base = asset(upper(regexp_extract(s, re, 1)));
    Column quote = asset(upper(regexp_extract(s, re, 2)));
    return when(base.notEqual(lit("")), concat(base, lit("/"), quote));
  }

  private static Column asset(Column a) {
    return when(a.equalTo("XBT"), lit("BTC")).when(a.equalTo("XDG"), lit("DOGE")).otherwise(a);
  }
}
