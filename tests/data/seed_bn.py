# The seed notebook's BatchNorm (docs/seed.md: 000_3771f2572c08f1d3.txt, cells In[2] and In[7]),
# copied verbatim as test data: only the `from d2l import torch as d2l` line is left out (d2l is
# not installed and the two cells do not use it). Its `bata`/`beta` typo makes every forward raise NameError.
import torch
from torch import nn


def batch_norm(X,gamma,bata,moving_mean,moving_var,eps,momentum):
    #没有梯度那就是在做inference
    if not torch.is_grad_enabled():
        X_hat=(X-moving_mean)/torch.sqrt(moving_var+eps)
    #做训练
    else:
        #2就是全连接层（2D张量），4就是2维卷积层（4D张量，NCHW)
        assert len(X.shape) in (2,4)
        #全连接层，在特征维度作用
        #第一维就是批量大小，第二维就是特征（列），要按行求平均，求出每一列的平均值和反差
        if len(X.shape)==2:
            #均值和方差都是一个行向量
            mean=X.mean(dim=0)
            var=((X-mean)**2).mean(dim=0)
        #2维卷积，作用在通道层BCHW
        else:
            #所有批量所有高和宽里面的像素都要求均值
            #求出来就是一个1*N*1*1的一个4Dtensor,因为keepdim=True
            mean=X.mean(dim=(0,2,3),keepdim=True)
            var=((X-mean)**2).mean(dim=(0,2,3),keepdim=True)
        X_hat=(X-mean)/torch.sqrt(moving_var+eps)
        #moving smooth 无限逼近真实的全局均值和方差
        #算全局的均值和方差当前并不知道有多少个
        #做inference的时候不会更新，只有训练时候更新
        moving_mean=momentum*moving_mean+(1-momentum)*mean
        moving_var=momentum*moving_var+(1-momentum)* moving_var
    
    Y=gamma*X_hat+beta
    #gard不重要，因为不需要算梯度
    #我们的层将保存均值和方差的移动平均值，以便在模型预测期间随后使用。
    return Y,moving_mean.data,moving_var.data

class BatchNorm(nn.Module):
    def __init__(self,num_features,num_dims):
        super().__init__()
        if num_dims==2:
            shape=(1,num_features)
        else:
            shape=(1,num_features,1,1)
        #gamma和beta是两个可学习的参数，应该放到parameter
        #mgamaa不能为0，为因子
        self.gamma=nn.Parameter(torch.ones(shape))
        self.beta=nn.Parameter(torch.zeros(shape))
        #  # 非模型参数的变量初始化为0和1，不需要训练，不需要放到parameter
        self.moving_mean=torch.zeros(shape)
        self.moving_var=torch.ones(shape)
    
    def forward(self,X):
        #moving_mean和moving_var没有放到parameter中，需要看下是不是放到了显存上
        if self.moving_mean.device != X.device:
            self.moving_mean = self.moving_mean.to(X.device)
            self.moving_var = self.moving_var.to(X.device)
        Y, self.moving_mean, self.moving_var = batch_norm(X, self.gamma, self.beta, self.moving_mean, self.moving_var,eps=1e-5, momentum=0.9)
        return Y
