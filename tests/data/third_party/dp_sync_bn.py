# A "synchronized" BatchNorm in the style of the DataParallel-only SyncBN repositories
# (vacancy/Synchronized-BatchNorm-PyTorch and its many vendored copies): the replicas of one
# process exchange their sums through a master/slave pipe that DataParallel's replicate
# callback (`__data_parallel_replicate__`) sets up; outside that callback (a plain process, or
# one rank of DistributedDataParallel over torch.distributed) `_is_parallel` stays False and the
# forward is plain F.batch_norm on the local batch. Written for bncheck's tests, not copied.
# Under `bncheck verify --world-size 2` no rank exchanges statistics: one sync_forward finding
# says so, and the other distributed failures are its consequences.
import collections
import queue
import threading

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

_Message = collections.namedtuple("_Message", ["sum", "ssum", "size"])
_Result = collections.namedtuple("_Result", ["mean", "inv_std"])


class _SyncMaster:
    """Gathers every replica's (sum, sum of squares, count); answers each with the joint mean and
    inverse standard deviation. Only DataParallel's replicate callback registers slaves."""

    def __init__(self, reduce):
        self._reduce = reduce
        self._queue = queue.Queue()
        self._slaves = {}

    def register_slave(self, copy_id):
        pipe = queue.Queue(maxsize=1)
        self._slaves[copy_id] = pipe
        return lambda msg: (self._queue.put((copy_id, msg)), pipe.get())[1]

    def run_master(self, msg):
        messages = [(0, msg)] + [self._queue.get() for _ in range(len(self._slaves))]
        results = self._reduce(messages)
        for copy_id, res in results[1:]:
            self._slaves[copy_id].put(res)
        return results[0][1]


class SynchronizedBatchNorm2d(_BatchNorm):
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self._sync_master = _SyncMaster(self._data_parallel_master)
        self._is_parallel = False
        self._parallel_id = None
        self._slave_pipe = None
        self._lock = threading.Lock()

    def _check_input_dim(self, input):
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")

    def forward(self, input):
        # Not under DataParallel (or in eval): the plain, local BatchNorm.
        if not (self._is_parallel and self.training):
            self._check_input_dim(input)
            momentum = 0.0 if self.momentum is None else self.momentum
            if self.training and self.track_running_stats:
                self.num_batches_tracked += 1
                if self.momentum is None:
                    momentum = 1.0 / float(self.num_batches_tracked)
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias,
                self.training or not self.track_running_stats, momentum, self.eps)

        shape = input.shape
        flat = input.reshape(shape[0], self.num_features, -1)
        size = flat.size(0) * flat.size(2)
        msg = _Message(flat.sum(dim=(0, 2)), (flat ** 2).sum(dim=(0, 2)), size)
        if self._parallel_id == 0:
            mean, inv_std = self._sync_master.run_master(msg)
        else:
            mean, inv_std = self._slave_pipe(msg)
        out = (flat - mean[None, :, None]) * inv_std[None, :, None]
        if self.affine:
            out = out * self.weight[None, :, None] + self.bias[None, :, None]
        return out.reshape(shape)

    def __data_parallel_replicate__(self, ctx, copy_id):
        self._is_parallel = True
        self._parallel_id = copy_id
        if copy_id == 0:
            ctx.sync_master = self._sync_master
        else:
            self._slave_pipe = ctx.sync_master.register_slave(copy_id)

    def _data_parallel_master(self, intermediates):
        size = sum(m.size for _, m in intermediates)
        total = sum(m.sum for _, m in intermediates)
        ssum = sum(m.ssum for _, m in intermediates)
        mean = total / size
        var = ssum / size - mean ** 2
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(
                self.momentum * var * size / (size - 1))
        inv_std = torch.rsqrt(var.clamp(min=self.eps) + self.eps)
        return [(copy_id, _Result(mean, inv_std)) for copy_id, _ in intermediates]
