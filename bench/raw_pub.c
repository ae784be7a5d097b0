/*
 * raw_pub.c — the baseline: a bare libmosquitto publisher, the physical limit of "publish N
 * messages to this broker from one client on this machine". Same protocol (MQTT 5), same
 * in-flight window and payloads as pg_mqtt_pub's worker, driven the same way (synchronously,
 * non-blocking socket, no libmosquitto thread).
 *
 *   raw_pub HOST PORT TOPIC QOS COUNT PAYLOAD_BYTES INFLIGHT
 *
 * Prints the seconds from the first publish until every message is written (QoS 0) or
 * acknowledged (QoS 1/2).
 */
#include <mosquitto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long done;

static void on_publish(struct mosquitto *m, void *obj, int mid, int rc, const mosquitto_property *p)
{
	(void) m; (void) obj; (void) mid; (void) rc; (void) p;
	done++;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 8) {
		fprintf(stderr, "usage: raw_pub HOST PORT TOPIC QOS COUNT PAYLOAD_BYTES INFLIGHT\n");
		return 2;
	}
	const char *host = argv[1], *topic = argv[3];
	int port = atoi(argv[2]), qos = atoi(argv[4]), size = atoi(argv[6]), inflight = atoi(argv[7]);
	long count = atol(argv[5]);
	char *payload = malloc(size);
	memset(payload, 'p', size);

	mosquitto_lib_init();
	struct mosquitto *m = mosquitto_new("raw-pub-baseline", true, NULL);
	mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
	mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
	mosquitto_max_inflight_messages_set(m, inflight);
	mosquitto_publish_v5_callback_set(m, on_publish);
	if (mosquitto_connect(m, host, port, 60) != MOSQ_ERR_SUCCESS) {
		fprintf(stderr, "connect failed\n");
		return 1;
	}
	/* wait for CONNACK */
	for (int i = 0; i < 100; i++)
		mosquitto_loop(m, 10, 1);

	double t0 = now();
	long sent = 0;
	while (done < count) {
		/* keep at most `inflight` unacknowledged, like the worker's window */
		while (sent < count && sent - done < inflight) {
			int mid;
			if (mosquitto_publish_v5(m, &mid, topic, size, payload, qos, false, NULL) != MOSQ_ERR_SUCCESS)
				break;
			sent++;
		}
		if (mosquitto_loop(m, 5, 1) != MOSQ_ERR_SUCCESS) {
			fprintf(stderr, "connection lost\n");
			return 1;
		}
	}
	printf("%.6f\n", now() - t0);
	mosquitto_disconnect(m);
	mosquitto_destroy(m);
	mosquitto_lib_cleanup();
	return 0;
}
