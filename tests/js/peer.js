// JS hypercore@9 + hypercore-protocol@8 peer for the replication interop tests and the
// replication benchmark. Every mode prints JSON lines on stdout; errors go to stderr with
// a non-zero exit.
//
//   node peer.js serve [--dir DIR | --gen N --size S] [--initiator] [--dial HOST:PORT]
//       opens (or generates in memory) a writable feed and serves it: listens on
//       127.0.0.1:0 and prints {"event":"listening","port","key","length"} (or, with
//       --dial, connects there instead). Each stdin line (hex) is appended as a block and
//       acknowledged with {"event":"appended","length"}. Runs until stdin closes.
//   node peer.js clone --key HEX (--connect HOST:PORT | --listen) --length N
//                     [--dir DIR] [--initiator 0|1] [--print] [--live-until M]
//       downloads into DIR (random-access-file) or memory until it holds blocks [0, N)
//       (then, with --live-until, until it holds [0, M)), printing
//       {"event":"done","length","byteLength","seconds","cpuSeconds"} and with --print
//       {"blocks":[hex...]}. --listen accepts one connection instead of dialing
//       (printing {"event":"listening","port"} first). Default role: the dialer is the
//       initiator.
//   node peer.js sparse --key HEX --connect HOST:PORT --blocks 3,70
//       a sparse reader: gets only those blocks, prints {"blocks":{"3":hex,...}}.
'use strict'
const hypercore = require('hypercore')
const ram = require('random-access-memory')
const raf = require('random-access-file')
const net = require('net')
const path = require('path')
const readline = require('readline')

function arg (name, dflt) {
  const i = process.argv.indexOf('--' + name)
  return i === -1 ? dflt : process.argv[i + 1]
}
function flag (name) {
  return process.argv.indexOf('--' + name) !== -1
}
function p (fn) {
  return new Promise((resolve, reject) => fn((err, val) => err ? reject(err) : resolve(val)))
}
function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}
function storageFor (dir) {
  if (!dir) return ram
  return (name) => raf(path.join(dir, name))
}
function hostPort (s) {
  const i = s.lastIndexOf(':')
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) }
}
function pipe (feed, socket, initiator) {
  socket.setNoDelay(true)
  const stream = feed.replicate(initiator, { live: true })
  socket.pipe(stream).pipe(socket)
  stream.on('error', (err) => { console.error('stream error: ' + err.message); process.exit(3) })
  socket.on('error', (err) => { console.error('socket error: ' + err.message); process.exit(3) })
  return stream
}

async function serve () {
  const feed = hypercore(storageFor(arg('dir')))
  await p(cb => feed.ready(cb))
  if (arg('gen')) {
    const n = Number(arg('gen'))
    const size = Number(arg('size', '1024'))
    const batch = []
    for (let i = 0; i < n; i++) {
      const b = Buffer.alloc(size, i & 255)
      b.writeUInt32BE(i, 0)
      batch.push(b)
      if (batch.length === 4096 || i === n - 1) {
        await p(cb => feed.append(batch.splice(0), cb))
      }
    }
  }
  const initiator = flag('initiator')
  const key = feed.key.toString('hex')
  if (arg('dial')) {
    const { host, port } = hostPort(arg('dial'))
    const socket = net.connect(port, host, () => out({ event: 'connected', key, length: feed.length }))
    pipe(feed, socket, initiator)
  } else {
    const server = net.createServer((socket) => pipe(feed, socket, initiator))
    await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
    out({ event: 'listening', port: server.address().port, key, length: feed.length })
  }
  const rl = readline.createInterface({ input: process.stdin })
  for await (const line of rl) {
    if (!line) continue
    await p(cb => feed.append(Buffer.from(line, 'hex'), cb))
    out({ event: 'appended', length: feed.length })
  }
  process.exit(0)
}

async function clone () {
  const key = Buffer.from(arg('key'), 'hex')
  const feed = hypercore(storageFor(arg('dir')), key)
  await p(cb => feed.ready(cb))
  const want = Number(arg('length'))
  const liveUntil = arg('live-until') ? Number(arg('live-until')) : null
  const start = process.hrtime.bigint()
  const cpuStart = process.cpuUsage()
  let phase = 0
  const check = async () => {
    const target = phase === 0 ? want : liveUntil
    if (feed.length < target || feed.downloaded(0, target) !== target) return
    const seconds = Number(process.hrtime.bigint() - start) / 1e9
    const cpu = process.cpuUsage(cpuStart)
    out({ event: 'done', length: feed.length, byteLength: feed.byteLength, seconds, cpuSeconds: (cpu.user + cpu.system) / 1e6 })
    if (flag('print')) {
      const blocks = []
      for (let i = 0; i < target; i++) blocks.push((await p(cb => feed.get(i, { wait: false }, cb))).toString('hex'))
      out({ blocks })
    }
    phase++
    if (liveUntil === null || phase > 1) process.exit(0)
    check()
  }
  // Events arrive in bursts while a check awaits: remember them and check again.
  let busy = false
  let again = false
  const onchange = () => {
    if (busy) { again = true; return }
    busy = true
    again = false
    check().then(() => {
      busy = false
      if (again) onchange()
    }, (err) => { console.error(err); process.exit(1) })
  }
  feed.on('download', onchange)
  feed.on('append', onchange)
  const initiatorArg = arg('initiator')
  if (flag('listen')) {
    const server = net.createServer((socket) => {
      pipe(feed, socket, initiatorArg === undefined ? false : initiatorArg === '1')
    })
    await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
    out({ event: 'listening', port: server.address().port })
  } else {
    const { host, port } = hostPort(arg('connect'))
    const socket = net.connect(port, host)
    pipe(feed, socket, initiatorArg === undefined ? true : initiatorArg === '1')
  }
  onchange()
}

async function sparse () {
  const key = Buffer.from(arg('key'), 'hex')
  const feed = hypercore(ram, key, { sparse: true })
  await p(cb => feed.ready(cb))
  const { host, port } = hostPort(arg('connect'))
  const socket = net.connect(port, host)
  pipe(feed, socket, true)
  const blocks = {}
  for (const i of arg('blocks').split(',').map(Number)) {
    blocks[i] = (await p(cb => feed.get(i, cb))).toString('hex')
  }
  out({ blocks, downloaded: feed.downloaded(0, feed.length), length: feed.length })
  process.exit(0)
}

const modes = { serve, clone, sparse }
const mode = modes[process.argv[2]]
if (!mode) {
  console.error('usage: peer.js serve|clone|sparse ...')
  process.exit(2)
}
mode().catch(err => { console.error(err && err.stack || err); process.exit(1) })
