'use strict'
// One node of a two-node Aedes MQTT broker cluster for the tests (tests/cluster.py): the nodes
// share subscriptions, retained messages and sessions (aedes-persistence-redis) and forward
// publications to each other (mqemitter-redis) through one redis-server.
//   node node.js --port MQTT_PORT --redis-port REDIS_PORT --id NODE_ID
// (or the environment: AEDES_PORT, AEDES_REDIS_PORT, AEDES_NODE_ID). Everything listens on and
// connects to 127.0.0.1. The packages come from AEDES_CLUSTER_MODULES, the node_modules directory
// scripts/deps.sh installs package-lock.json into (outside the checkout); without it, from the
// usual places. Prints one line "aedes-cluster node ID ready ..." once clients can connect;
// SIGTERM or SIGINT closes the clients, the broker and the redis connections, then exits 0.
const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')
const { createRequire } = require('node:module')

function arg (name, env) {
  const i = process.argv.indexOf('--' + name)
  const v = i >= 0 ? process.argv[i + 1] : process.env[env]
  if (v === undefined || v === '') {
    console.error(`aedes-cluster: --${name} (or ${env}) is required`)
    process.exit(2)
  }
  return v
}

const port = Number(arg('port', 'AEDES_PORT'))
const redisPort = Number(arg('redis-port', 'AEDES_REDIS_PORT'))
const id = arg('id', 'AEDES_NODE_ID')
const modules = process.env.AEDES_CLUSTER_MODULES
const load = modules ? createRequire(path.join(modules, 'noop.js')) : require

// the version of the aedes package whose entry point is `main` ('exports' hides its package.json)
function aedesVersion (main) {
  for (let d = path.dirname(main); d !== path.dirname(d); d = path.dirname(d)) {
    try {
      const p = JSON.parse(fs.readFileSync(path.join(d, 'package.json'), 'utf8'))
      if (p.name === 'aedes') return p.version
    } catch {}
  }
  return '?'
}

function log (...a) {
  console.log(new Date().toISOString(), `[${id}]`, ...a)
}

async function main () {
  let Aedes, persistenceRedis, mqRedis, version
  try {
    Aedes = load('aedes').Aedes
    persistenceRedis = load('aedes-persistence-redis')
    mqRedis = load('mqemitter-redis')
    version = aedesVersion(load.resolve('aedes'))
  } catch (e) {
    console.error(`aedes-cluster: cannot load the packages (AEDES_CLUSTER_MODULES=${modules || ''}; scripts/deps.sh installs them): ${e.message}`)
    process.exit(3)
  }
  const redis = { host: '127.0.0.1', port: redisPort, family: 4 }
  const mq = mqRedis(redis)
  const persistence = persistenceRedis(redis)
  mq.state.on('error', (e) => log('mqemitter-redis error:', e.message))
  const broker = await Aedes.createBroker({ id, mq, persistence })
  broker.on('client', (c) => log('client connected:', c.id, 'v' + c.version))
  broker.on('clientDisconnect', (c) => log('client disconnected:', c.id))
  broker.on('clientError', (c, e) => log('client error:', c.id, e.message))
  broker.on('connectionError', (c, e) => log('connection error:', c && c.id, e.message))
  const server = net.createServer(broker.handle)
  server.on('error', (e) => {
    console.error(`aedes-cluster: cannot listen on 127.0.0.1:${port}: ${e.message}`)
    process.exit(4)
  })
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve))
  console.log(`aedes-cluster node ${id} ready on 127.0.0.1:${port} (redis 127.0.0.1:${redisPort}, aedes ${version}, node ${process.version})`)

  let stopping = false
  function stop (sig) {
    if (stopping) return
    stopping = true
    log(`${sig}: closing`)
    // not waiting for ever: a broker whose redis is gone may not finish closing
    setTimeout(() => { log('closing took too long; exiting'); process.exit(0) }, 5000).unref()
    server.close()
    broker.close(() => {
      persistence.destroy().catch(() => {}).finally(() => {
        log('closed')
        process.exit(0)
      })
    })
  }
  process.on('SIGTERM', () => stop('SIGTERM'))
  process.on('SIGINT', () => stop('SIGINT'))
}

main().catch((e) => {
  console.error('aedes-cluster: ' + (e && e.stack ? e.stack : e))
  process.exit(1)
})
