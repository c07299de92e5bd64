// Preloaded (`node --import`) into Portkey's own process by bench/paths/portkey.ts.
// Portkey's published start script serves on every interface; whatever it asks
// `listen` for becomes 127.0.0.1 and a free port, and the address each server
// really got is printed for the bench to read and check.
import net from 'node:net';

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  this.once('listening', () => {
    const a = this.address();
    process.stderr.write(`portkey listening on http://${a.address}:${a.port}\n`);
  });
  return listen.call(this, 0, '127.0.0.1', args.find((a) => typeof a === 'function'));
};
