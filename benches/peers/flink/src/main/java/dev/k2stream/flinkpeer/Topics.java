package dev.k2stream.flinkpeer;

import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.errors.TopicExistsException;

/**
 * topics: creates the input topics if missing (the Kafka source fails on a topic that
 * does not exist) and the alerts topic with {@code message.timestamp.type=LogAppendTime}
 * (set on an existing alerts topic too), so an alert's record timestamp is its arrival time.
 */
final class Topics {
    private Topics() {}

    static final Set<String> FLAGS = Set.of("brokers", "binance-topic", "kraken-topic", "alerts-topic", "partitions", "alerts-partitions");

    static void run(Args a) throws Exception {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, a.str("brokers", "127.0.0.1:9092"));
        int partitions = a.integer("partitions", 4, 1);
        int alertPartitions = a.integer("alerts-partitions", 1, 1);
        String alerts = a.str("alerts-topic", "flink.arbitrage.alerts");
        try (Admin admin = Admin.create(p)) {
            List<NewTopic> create = new ArrayList<>();
            for (String t : List.of(a.str("binance-topic", "market.crypto.trades.binance"), a.str("kraken-topic", "market.crypto.trades.kraken"))) {
                create.add(new NewTopic(t, partitions, (short) 1));
            }
            create.add(new NewTopic(alerts, alertPartitions, (short) 1)
                    .configs(Map.of("message.timestamp.type", "LogAppendTime")));
            createIfMissing(admin, create);
            ConfigResource r = new ConfigResource(ConfigResource.Type.TOPIC, alerts);
            Config cfg = admin.describeConfigs(List.of(r)).all().get(60, TimeUnit.SECONDS).get(r);
            ConfigEntry e = cfg.get("message.timestamp.type");
            if (e == null || !"LogAppendTime".equals(e.value())) {
                Map<ConfigResource, Collection<AlterConfigOp>> op = Map.of(r, List.of(new AlterConfigOp(
                        new ConfigEntry("message.timestamp.type", "LogAppendTime"), AlterConfigOp.OpType.SET)));
                admin.incrementalAlterConfigs(op).all().get(60, TimeUnit.SECONDS);
                System.err.println("topics: set message.timestamp.type=LogAppendTime on existing " + alerts);
            }
        }
    }

    private static void createIfMissing(Admin admin, List<NewTopic> topics) throws Exception {
        var result = admin.createTopics(topics).values();
        for (var e : result.entrySet()) {
            try {
                e.getValue().get(60, TimeUnit.SECONDS);
                System.err.println("topics: created " + e.getKey());
            } catch (ExecutionException ex) {
                if (!(ex.getCause() instanceof TopicExistsException)) throw ex;
            }
        }
    }
}
