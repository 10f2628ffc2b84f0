/* Generated test populations and sim-record readers; see scenario.h. */
#include "scenario.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

uint64_t sc_rand(sc_world *w)
{
    /* splitmix64: reproducible from the printed seed */
    uint64_t z = (w->rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static const char *niches[] = {"food", "tech", "fashion", ""};

/* Writes person p's number in one of several local or international spellings. */
static void spell_phone(char *out, size_t n, long p, int style)
{
    long sub = p % 10000000; /* 7 digits after 012 */
    char d[16];
    snprintf(d, sizeof d, "%07ld", sub);
    switch (style % 5) {
    case 0:
        snprintf(out, n, "+6012%s", d);
        break;
    case 1:
        snprintf(out, n, "012-%.3s %.4s", d, d + 3);
        break;
    case 2:
        snprintf(out, n, "6012%s", d);
        break;
    case 3:
        snprintf(out, n, "(012) %.3s.%.4s", d, d + 3);
        break;
    default:
        snprintf(out, n, "+60 12 %.3s %.4s", d, d + 3);
        break;
    }
}

void sc_populate(sc_world *w, PGconn *c, uint64_t seed, int nusers, int devices_per_user,
                 int offline_per_user, int nleads, double min_delay, double max_delay)
{
    memset(w, 0, sizeof *w);
    w->rng = seed;
    w->nusers = nusers;
    for (int u = 0; u < nusers; u++) {
        PGresult *r = wt_sql(c, "INSERT INTO users (name) VALUES ('user %d') RETURNING id", u);
        snprintf(w->users[u], sizeof w->users[u], "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
        for (int k = 0; k < devices_per_user; k++) {
            sc_device *d = &w->devices[w->ndevices++];
            d->user = u;
            d->offline = k < offline_per_user;
            r = wt_sql(
                c,
                "INSERT INTO user_devices (user_id, device_name, platform, min_delay_seconds,"
                " max_delay_seconds, settings) VALUES ('%s', 'u%d-d%d', 'sim', %.3f, %.3f, '%s')"
                " RETURNING id",
                w->users[u], u, k, min_delay, max_delay,
                d->offline ? "{\"sim_offline\": true}" : "{}");
            snprintf(d->id, sizeof d->id, "%s", PQgetvalue(r, 0, 0));
            PQclear(r);
        }
    }
    w->nleads = nleads;
    w->leads = calloc((size_t)nleads, sizeof *w->leads);
    long next_person = 1000;
    /* persons[u][k]: numbers already used by user u, to repeat in another spelling */
    long *persons = calloc((size_t)nleads, sizeof *persons);
    int *person_user = calloc((size_t)nleads, sizeof *person_user);
    int npersons = 0;
    char *sql = malloc(1 << 20);
    size_t len = 0;
    for (int i = 0; i < nleads; i++) {
        sc_lead *l = &w->leads[i];
        l->user = (int)(sc_rand(w) % (uint64_t)nusers);
        int first = 0;
        for (int k = 0; k < w->ndevices; k++)
            if (w->devices[k].user == l->user) {
                first = k;
                break;
            }
        l->device = first + (int)(sc_rand(w) % (uint64_t)devices_per_user);
        snprintf(l->name, sizeof l->name, "Lead %d", i);
        snprintf(l->niche, sizeof l->niche, "%s", niches[sc_rand(w) % 4]);
        l->customer = sc_rand(w) % 2 == 0;
        l->opted_out = sc_rand(w) % 20 == 0;
        uint64_t kind = sc_rand(w) % 100;
        long person = -1;
        if (kind < 3) {
            /* invalid: letters, or too short */
            /* letters, or a country code starting with 0 */
            snprintf(l->phone_raw, sizeof l->phone_raw, kind == 0 ? "12ab%d" : "+0%d", i);
        } else if (kind < 10 && npersons > 0) {
            /* the same person as an earlier lead of this user, spelled differently */
            for (int tries = 0; tries < 8 && person < 0; tries++) {
                int j = (int)(sc_rand(w) % (uint64_t)npersons);
                if (person_user[j] == l->user)
                    person = persons[j];
            }
        }
        if (l->phone_raw[0] == '\0') {
            if (person < 0) {
                person = next_person++;
                persons[npersons] = person;
                person_user[npersons++] = l->user;
            }
            /* A spelling not used before for this person: find one that is
             * free; when all five are taken, a new person. */
            bool taken = true;
            for (int style = (int)(sc_rand(w) % 5), t = 0; t < 5 && taken; t++, style++) {
                spell_phone(l->phone_raw, sizeof l->phone_raw, person, style);
                taken = false;
                for (int j = 0; j < i && !taken; j++)
                    taken =
                        w->leads[j].user == l->user && !strcmp(w->leads[j].phone_raw, l->phone_raw);
            }
            if (taken) {
                person = next_person++;
                persons[npersons] = person;
                person_user[npersons++] = l->user;
                spell_phone(l->phone_raw, sizeof l->phone_raw, person, (int)(sc_rand(w) % 5));
            }
            snprintf(l->e164, sizeof l->e164, "+6012%07ld", person % 10000000);
        }
        if (len == 0)
            len += (size_t)sprintf(sql + len,
                                   "INSERT INTO leads (user_id, device_id, name, phone, niche,"
                                   " target_status, opted_out_at) VALUES ");
        else
            sql[len++] = ',';
        len +=
            (size_t)sprintf(sql + len, "('%s','%s','%s','%s',%s%s%s,'%s',%s)", w->users[l->user],
                            w->devices[l->device].id, l->name, l->phone_raw, l->niche[0] ? "'" : "",
                            l->niche[0] ? l->niche : "NULL", l->niche[0] ? "'" : "",
                            l->customer ? "customer" : "prospect", l->opted_out ? "now()" : "NULL");
        if (len > (1 << 20) - 4096 || i == nleads - 1 || (i + 1) % 500 == 0) {
            sql[len] = '\0';
            PQclear(wt_sql(c, "%s", sql));
            len = 0;
        }
    }
    free(sql);
    free(persons);
    free(person_user);
    /* Lead ids, in insertion order. */
    PGresult *r = wt_sql(c, "SELECT id, name FROM leads");
    for (int k = 0; k < PQntuples(r); k++) {
        int i = atoi(PQgetvalue(r, k, 1) + strlen("Lead "));
        snprintf(w->leads[i].id, sizeof w->leads[i].id, "%s", PQgetvalue(r, k, 0));
    }
    PQclear(r);
}

void sc_world_free(sc_world *w)
{
    free(w->leads);
    memset(w, 0, sizeof *w);
}

static const char *field(redisReply *fields, const char *name)
{
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (!strcmp(fields->element[i]->str, name))
            return fields->element[i + 1]->str;
    return "";
}

sc_send *sc_read_sends(wt_env *env, size_t *n)
{
    redisContext *rc = wt_redis(env);
    size_t cap = 1024, len = 0;
    sc_send *out = calloc(cap, sizeof *out);
    char from[64] = "-";
    for (;;) {
        redisReply *r = redisCommand(rc, "XRANGE wacast:sim:sends %s + COUNT 5000", from);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "XRANGE failed\n");
            abort();
        }
        if (r->elements == 0) {
            freeReplyObject(r);
            break;
        }
        for (size_t i = 0; i < r->elements; i++) {
            redisReply *e = r->element[i];
            if (len == cap) {
                cap *= 2;
                out = realloc(out, cap * sizeof *out);
            }
            sc_send *s = &out[len++];
            memset(s, 0, sizeof *s);
            redisReply *f = e->element[1];
            s->msg = atoll(field(f, "msg"));
            snprintf(s->campaign, sizeof s->campaign, "%s", field(f, "campaign"));
            snprintf(s->device, sizeof s->device, "%s", field(f, "device"));
            snprintf(s->to, sizeof s->to, "%s", field(f, "to"));
            snprintf(s->sender, sizeof s->sender, "%s", field(f, "sender"));
            s->text = strdup(field(f, "text"));
            s->ts_us = atoll(field(f, "ts_us"));
            s->ok = !strcmp(field(f, "ok"), "1");
        }
        snprintf(from, sizeof from, "(%s", r->element[r->elements - 1]->element[0]->str);
        freeReplyObject(r);
    }
    redisFree(rc);
    *n = len;
    return out;
}

void sc_sends_free(sc_send *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(s[i].text);
    free(s);
}

void sc_start_daemons(wt_env *env, int copies, const char *const *extra)
{
    static const char *base[] = {SC_TEST_TIMINGS, "WACAST_BATCH=700", NULL};
    const char *envs[64];
    int n = 0;
    for (int i = 0; base[i]; i++)
        envs[n++] = base[i];
    for (int i = 0; extra && extra[i] && n < 62; i++)
        envs[n++] = extra[i];
    envs[n] = NULL;
    for (int k = 0; k < copies; k++) {
        char name[32];
        snprintf(name, sizeof name, "scheduler-%d", k + 1);
        if (wt_spawn(env, "wacast-scheduler", name, envs) < 0)
            abort();
        snprintf(name, sizeof name, "dispatcher-%d", k + 1);
        if (wt_spawn(env, "wacast-dispatcher", name, envs) < 0)
            abort();
        snprintf(name, sizeof name, "sender-%d", k + 1);
        if (wt_spawn(env, "wacast-sender", name, envs) < 0)
            abort();
    }
}

typedef struct final_arg {
    PGconn *c;
    const char *const *ids;
    int n;
} final_arg;

static bool all_final(void *arg)
{
    final_arg *a = arg;
    for (int i = 0; i < a->n; i++) {
        long done = wt_sql_long(a->c,
                                "SELECT count(*) FROM campaigns WHERE id = '%s' AND status IN "
                                "('finished', 'failed', 'cancelled')",
                                a->ids[i]);
        if (!done)
            return false;
    }
    return true;
}

bool sc_wait_campaigns_final(PGconn *c, const char *const *ids, int n, int timeout_ms)
{
    final_arg a = {c, ids, n};
    return wt_wait_for(all_final, &a, timeout_ms);
}
