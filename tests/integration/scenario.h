/* Shared pieces of the integration tests: a generated population of users,
 * devices and leads whose expected messages the test computes on its own
 * (from how it generated the data, not by calling wacast's code), the daemons
 * to start, and readers of the sim record. */
#ifndef SCENARIO_H
#define SCENARIO_H

#include <stdbool.h>
#include <stdint.h>

#include "wt_env.h"

#define SC_MAX_USERS 4
#define SC_MAX_DEVICES 256

typedef struct sc_device {
    char id[40];
    int user;
    bool offline; /* sim_offline: the sender cannot connect it */
} sc_device;

typedef struct sc_lead {
    char id[40];
    int user;
    int device; /* index into devices */
    char name[32];
    char phone_raw[32];
    char e164[20];  /* "" when the raw phone is invalid */
    char niche[16]; /* "" for none */
    bool customer;
    bool opted_out;
} sc_lead;

typedef struct sc_world {
    int nusers;
    char users[SC_MAX_USERS][40];
    int ndevices;
    sc_device devices[SC_MAX_DEVICES];
    int nleads;
    sc_lead *leads;
    uint64_t rng;
} sc_world;

/* One entry of the sim record. */
typedef struct sc_send {
    long long msg;
    char campaign[40];
    char device[40];
    char to[24];
    char *text;
    char sender[96];
    long long ts_us;
    bool ok;
} sc_send;

uint64_t sc_rand(sc_world *w);

/* Creates users, devices (min/max delay in seconds) and leads in PostgreSQL
 * and fills w. Phones repeat across formats, some are invalid, some leads are
 * opted out; every lead belongs to a device of its own user. */
void sc_populate(sc_world *w, PGconn *c, uint64_t seed, int nusers, int devices_per_user,
                 int offline_per_user, int nleads, double min_delay, double max_delay);
void sc_world_free(sc_world *w);

/* Reads the whole sim record. */
sc_send *sc_read_sends(wt_env *env, size_t *n);
void sc_sends_free(sc_send *s, size_t n);

/* The test-friendly timings the integration tests give their daemons (an
 * initializer list of environment strings). */
#define SC_TEST_TIMINGS                                                                            \
    "WACAST_LOG_LEVEL=info", "WACAST_POLL_MS=200", "WACAST_LEASE_TTL_MS=3000",                     \
        "WACAST_DEVICE_REFRESH_MS=500", "WACAST_IDLE_POLL_MS=1000", "WACAST_RECONCILE_MS=2000",    \
        "WACAST_ONLINE_GRACE_MS=10000", "WACAST_CLAIM_IDLE_MS=5000"

/* Starts copies of each daemon with test-friendly timings plus extra env. */
void sc_start_daemons(wt_env *env, int copies, const char *const *extra);

/* Waits until every listed campaign is in a final state (or timeout). */
bool sc_wait_campaigns_final(PGconn *c, const char *const *ids, int n, int timeout_ms);

#endif
