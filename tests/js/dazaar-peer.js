// JS dazaar@1.6.1 side of the market interop tests.
//
//   node dazaar-peer.js sell --blocks N [--mode free|paid|deny] [--master HEX] [--append-ms MS]
//       sells a feed of N blocks ("block <i>") over TCP on 127.0.0.1; prints
//       {"port","sellerKey","feedKey"} and serves until killed. free: uniqueFeed false;
//       paid: a rekeyed feed per buyer, valid {"type":"time","remaining":60000};
//       deny: validate fails with "Needs payment". --append-ms appends a block that often.
//   node dazaar-peer.js buy --seller HEX --port P --count N [--master HEX]
//       buys from 127.0.0.1:P; prints {"feedKey","blocks":[hex...],"valid":info} once it
//       holds N blocks, or {"invalid":"<error>"} when rejected; exits 1 after 20 s.
//       --until-invalid: downloads until dazaar/invalid comes, then (after 500 ms for
//       the last blocks to be stored) prints {"invalid","valid","held"}, held being the
//       blocks downloaded (a product priced by data).
'use strict'
const net = require('net')
const pump = require('pump')
const hypercore = require('hypercore')
const ram = require('random-access-memory')
const dazaar = require('dazaar')

function arg (name, dflt) {
  const i = process.argv.indexOf('--' + name)
  return i === -1 ? dflt : process.argv[i + 1]
}

function market () {
  const master = arg('master')
  return dazaar(ram, master ? { masterKey: Buffer.from(master, 'hex') } : {})
}

function sell () {
  const n = Number(arg('blocks', '10'))
  const mode = arg('mode', 'free')
  const m = market()
  const feed = hypercore(ram)
  feed.ready(() => {
    const blocks = []
    for (let i = 0; i < n; i++) blocks.push(Buffer.from('block ' + i))
    feed.append(blocks, (err) => {
      if (err) throw err
      const seller = m.sell(feed, {
        uniqueFeed: mode !== 'free',
        validateInterval: Number(process.env.DAZAAR_VALIDATE_MS || 200),
        validate (remoteKey, cb) {
          if (mode === 'deny') return cb(new Error('Needs payment'))
          if (mode === 'free') return cb(null, { type: 'free' })
          cb(null, { type: 'time', remaining: 60000 })
        }
      })
      seller.ready((err) => {
        if (err) throw err
        const server = net.createServer((socket) => {
          const stream = seller.replicate()
          pump(socket, stream, socket, () => {})
        })
        server.listen(0, '127.0.0.1', () => {
          console.log(JSON.stringify({
            port: server.address().port,
            sellerKey: seller.key.toString('hex'),
            feedKey: feed.key.toString('hex')
          }))
        })
        const every = Number(arg('append-ms', '0'))
        if (every > 0) {
          let i = n
          setInterval(() => { feed.append(Buffer.from('t=' + Date.now())); i++ }, every)
        }
      })
    })
  })
}

function buy () {
  const count = Number(arg('count', '1'))
  const m = market()
  const buyer = m.buy(Buffer.from(arg('seller'), 'hex'))
  let validInfo = null
  let bought = null
  const untilInvalid = process.argv.includes('--until-invalid')
  const timer = setTimeout(() => { console.error('timeout'); process.exit(1) }, 20000)
  buyer.on('valid', (info) => { validInfo = info })
  buyer.on('invalid', (err) => {
    clearTimeout(timer)
    if (untilInvalid) {
      setTimeout(() => {
        const held = bought ? bought.downloaded() : 0
        console.log(JSON.stringify({ invalid: err.message, valid: validInfo, held }))
        process.exit(0)
      }, 500)
      return
    }
    console.log(JSON.stringify({ invalid: err.message }))
    process.exit(0)
  })
  buyer.on('feed', (feed) => {
    bought = feed
    if (untilInvalid) return
    const check = () => {
      if (feed.length < count) return
      feed.download({ start: 0, end: count }, (err) => {
        if (err) throw err
        const out = []
        let pending = count
        for (let i = 0; i < count; i++) {
          feed.get(i, (err, data) => {
            if (err) throw err
            out[i] = data.toString('hex')
            if (--pending === 0) {
              console.log(JSON.stringify({ feedKey: feed.key.toString('hex'), blocks: out, valid: validInfo }))
              clearTimeout(timer)
              process.exit(0)
            }
          })
        }
      })
    }
    feed.on('append', check)
    check()
  })
  buyer.ready(() => {
    const socket = net.connect(Number(arg('port')), '127.0.0.1')
    const stream = buyer.replicate()
    pump(socket, stream, socket, () => {})
  })
}

const cmd = process.argv[2]
if (cmd === 'sell') sell()
else if (cmd === 'buy') buy()
else { console.error('usage: dazaar-peer.js sell|buy ...'); process.exit(2) }
